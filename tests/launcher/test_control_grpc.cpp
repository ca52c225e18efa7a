// The control server under abuse, at the wire (built only with gRPC): malformed and oversized
// requests are refused without touching the run, and watchers that vanish mid-stream leave it as
// it was: a run so treated trains bit-identically to one nobody called.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "control_util.h"

namespace keel::test {
namespace {

// One unary call of `method` with `bytes` as the request, whatever they are.
grpc::Status raw_call(const std::string& address, const std::string& method,
                      const std::string& bytes) {
  grpc::GenericStub stub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::CompletionQueue cq;
  grpc::Slice slice(bytes);
  const grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer reply;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> call =
      stub.PrepareUnaryCall(&ctx, method, request, &cq);
  call->StartCall();
  grpc::Status status;
  call->Finish(&reply, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  cq.Next(&tag, &ok);
  return status;
}

TEST_F(Cli, MalformedRequestsAndVanishingWatchersLeaveTheRunBitIdentical) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  const std::string cfg = write("m.yaml", kTensorParallelModel);
  const std::string straight = (dir_ / "straight").string(), out = (dir_ / "abused").string();
  Result r = train(2, cfg, std::string(kControlSets) + " --set training.output_dir=" + straight);
  ASSERT_EQ(r.code, 0) << r.out;

  BackgroundRun job(2, cfg, std::string(kControlSets), out);
  ASSERT_TRUE(wait_for_steps(out, 3)) << job.join().out;
  const std::string address = nlohmann::json::parse(file_bytes(out + "/control.json"))["address"];

  // Bytes that are no protobuf message at all.
  grpc::Status s = raw_call(address, "/keel.control.v1.Control/Stop", "\xff\xff\xff\xff\xff");
  EXPECT_FALSE(s.ok());
  // A request past the 16 KiB limit is refused before it is parsed.
  s = raw_call(address, "/keel.control.v1.Control/Pause", std::string(1 << 20, '\x0a'));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  // A well-formed request with a 1000-character request id.
  std::string long_id = "\x0a\xe8\x07" + std::string(1000, 'x');
  s = raw_call(address, "/keel.control.v1.Control/Checkpoint", long_id);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_EQ(s.error_message(),
            "request_id must be 1 to 128 characters (a retry reuses the first call's)");
  // No method of that name.
  s = raw_call(address, "/keel.control.v1.Control/Explode", "");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  // Watchers killed mid-stream (each got at least one message first).
  for (int i = 0; i < 3; ++i) {
    const Result w =
        shell("timeout -s KILL 1 " + std::string(KEEL_BINARY) + " watch " + out + " --json");
    EXPECT_NE(w.out.find("\"step\""), std::string::npos) << "a watcher never connected: " << w.out;
  }
  const nlohmann::json status = status_json(out);
  ASSERT_TRUE(status.is_object()) << "the server stopped answering";
  EXPECT_EQ(status["state"], "running");

  r = job.join();
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("keel: done, 3000 steps"), std::string::npos) << r.out;
  EXPECT_EQ(metric_texts(out + "/metrics.jsonl", "loss"),
            metric_texts(straight + "/metrics.jsonl", "loss"));
  EXPECT_TRUE(file_bytes(out + "/model.safetensors") ==
              file_bytes(straight + "/model.safetensors"));
}

}  // namespace
}  // namespace keel::test
