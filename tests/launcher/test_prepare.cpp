// keel prepare end to end: text in, a tokenizer and shards out, a run trains on them; the
// mistakes a user makes with prepared data are one clear line each, found before any step: a
// shard missing from the list prepare.json keeps, a vocabulary beyond the model's, ranks that see
// different data. The command prepare.json records makes the same shards again.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "runtime/data/token_shard.h"
#include "runtime/data/tokenizer.h"

namespace keel::test {
namespace {

TEST_F(Cli, PreparedDataTrainsAndMismatchesAreClearErrors) {
  const std::string prep = (dir_ / "prep").string();
  Result r = run("prepare --help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("--vocab-size"), std::string::npos) << r.out;
  r = run("prepare data/kjv.txt.gz --vocab-size 512 --out " + prep);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("trained a 512-token byte-level BPE"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(prep + "/tokenizer.json"));
  EXPECT_TRUE(fs::exists(prep + "/train_00000.tokens"));
  EXPECT_TRUE(fs::exists(prep + "/val_00000.tokens"));

  const std::string cfg = write("c.yaml", std::string(kParallelModel));
  const std::string common = " --set data.train=" + prep + " --set training.max_steps=3" +
                             " --set training.output_dir=" + out_dir();
  r = run("train " + cfg + common + " --set model.vocab_size=512");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("tokenizer " + prep + "/tokenizer.json, 512 tokens"), std::string::npos)
      << r.out;
  const std::vector<double> loss = losses(out_dir() + "/metrics.jsonl");
  ASSERT_EQ(loss.size(), 3u);
  EXPECT_NEAR(loss[0], std::log(512.0), 0.3);  // a fresh model guesses among 512 tokens
  fs::remove_all(out_dir());

  // max_steps -1: a number of epochs, resolved from the data; config.yaml shows the steps.
  r = run("train " + cfg + " --set data.train=" + prep + " --set model.vocab_size=512" +
          " --set training.max_steps=-1 --set training.num_train_epochs=0.0005" +
          " --set training.warmup_steps=0 --set training.warmup_ratio=0.5" +
          " --set training.output_dir=" + out_dir());
  ASSERT_EQ(r.code, 0) << r.out;
  std::ifstream resolved(out_dir() + "/config.yaml");
  const std::string yaml((std::istreambuf_iterator<char>(resolved)),
                         std::istreambuf_iterator<char>());
  const size_t at = yaml.find("max_steps: ");
  ASSERT_NE(at, std::string::npos) << yaml;
  const int steps = std::stoi(yaml.substr(at + 11));
  EXPECT_GE(steps, 2);
  EXPECT_LE(steps, 20);
  EXPECT_EQ(losses(out_dir() + "/metrics.jsonl").size(), static_cast<size_t>(steps));
  EXPECT_NE(yaml.find("warmup_steps: " + std::to_string((steps + 1) / 2)), std::string::npos)
      << yaml;
  fs::remove_all(out_dir());

  expect_clean_failure(run("train " + cfg + common),
                       "model.vocab_size is 256, but the tokenizer (" + prep +
                           "/tokenizer.json) has 512 tokens; set model.vocab_size to 512 or more");
  expect_clean_failure(
      run("train " + cfg + common + " --set model.vocab_size=512 --set data.tokenizer=bytes"),
      "was made with another tokenizer than the one this run uses");
  r = run("prepare data/kjv.txt.gz --vocab-size 512 --out " + prep);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("already holds prepared data"), std::string::npos) << r.out;
  r = run("prepare data/kjv.txt.gz --out " + prep + "2");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("needs one of --vocab-size N"), std::string::npos) << r.out;
}

// n lines of text, each naming its number and `word`.
std::string numbered_lines(int n, const std::string& word) {
  std::string text;
  for (int i = 0; i < n; ++i) text += "line " + std::to_string(1000 + i) + " of the " + word + "\n";
  return text;
}

// The model of the data tests: kParallelModel on byte tokens, 3 steps.
std::string byte_run(const std::string& data, const std::string& out) {
  return " --set data.train=" + data +
         " --set data.tokenizer=auto --set training.max_steps=3 --set training.output_dir=" + out;
}

TEST_F(Cli, TheRecordedCommandMakesTheSameShards) {
  const std::string prep = (dir_ / "prep").string();
  const std::string text = write("a.txt", numbered_lines(2000, "text"));
  Result r = run("prepare " + text + " --tokenizer bytes --shard-tokens 15000 --out " + prep);
  ASSERT_EQ(r.code, 0) << r.out;
  std::ifstream f(prep + "/prepare.json");
  const nlohmann::json j = nlohmann::json::parse(f);
  ASSERT_TRUE(j.contains("command") && j.contains("shards")) << j.dump(1);
  const std::string command = j["command"];
  ASSERT_EQ(command.rfind("keel prepare ", 0), 0u) << command;
  ASSERT_EQ(j["shards"].size(), 4u);  // 44 000 bytes: 3 training shards and one of validation
  std::vector<std::string> before;
  for (const nlohmann::json& e : j["shards"])
    before.push_back(file_bytes(prep + "/" + e["file"].get<std::string>()));
  fs::remove_all(prep);
  r = shell(std::string(KEEL_BINARY) + command.substr(4));
  ASSERT_EQ(r.code, 0) << r.out;
  for (size_t i = 0; i < before.size(); ++i)
    EXPECT_TRUE(file_bytes(prep + "/" + j["shards"][i]["file"].get<std::string>()) == before[i])
        << i;
}

TEST_F(Cli, AMissingMiddleShardStopsTheRunBeforeAnyStep) {
  const std::string prep = (dir_ / "prep").string();
  const std::string text = write("a.txt", numbered_lines(2000, "text"));
  Result r = run("prepare " + text + " --tokenizer bytes --shard-tokens 15000 --out " + prep);
  ASSERT_EQ(r.code, 0) << r.out;
  fs::remove(prep + "/train_00001.tokens");
  const std::string cfg = write("c.yaml", std::string(kParallelModel));
  expect_clean_failure(run("train " + cfg + byte_run(prep, out_dir())),
                       "prepared data " + prep +
                           " lacks train_00001.tokens (15000 tokens), which its prepare.json "
                           "lists: the directory is incomplete");
  // A directory from a keel prepare that kept no list trains, and says it was not checked.
  std::ifstream f(prep + "/prepare.json");
  nlohmann::json j = nlohmann::json::parse(f);
  j.erase("shards");
  j.erase("command");
  write("prep/prepare.json", j.dump(1));
  r = run("train " + cfg + byte_run(prep, out_dir()));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("keel: note: " + prep + "/prepare.json lists no shards"), std::string::npos)
      << r.out;
}

// A shard whose header promises a larger vocabulary than the model's used to train until a
// token beyond the model came up (cross_entropy: target 700 ... is not below V = 256) or, as
// here, to train on without a word; now it is refused when opened.
TEST_F(Cli, AShardVocabularyBeyondTheModelIsRefusedWhenOpened) {
  std::vector<int32_t> tokens(20000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(i % 256);
  tokens[19000] = 700;
  const std::string shard = (dir_ / "big.tokens").string();
  runtime::write_token_shard(shard, tokens, {1000, 1, runtime::Tokenizer::bytes().fingerprint()});
  const std::string cfg = write("c.yaml", std::string(kParallelModel));
  expect_clean_failure(
      run("train " + cfg + byte_run(shard, out_dir()) + " --set data.tokenizer=bytes"),
      "token shard " + shard +
          " holds tokens of a 1000-token vocabulary, more than the model's 256; set "
          "model.vocab_size to 1000 or more");
}

// Two nodes with different copies at the same path: each rank runs in its own directory, where
// the relative data.train 'data' names different shards (the config, and its hash, the same).
// The ranks refuse to start, naming rank 1; with equal copies they train.
TEST_F(Cli, RanksThatSeeDifferentDataRefuseToStart) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  for (const auto& [rank, word] : {std::pair{"rank0", "text"}, {"rank1", "test"}}) {
    fs::create_directories(dir_ / rank);
    const std::string text = write(std::string(rank) + ".txt", numbered_lines(2000, word));
    const Result r = run("prepare " + text + " --tokenizer bytes --shard-tokens 15000 --out " +
                         (dir_ / rank / "data").string());
    ASSERT_EQ(r.code, 0) << r.out;
  }
  const std::string cfg = write("c.yaml", std::string(kParallelModel));
  const std::string each_rank = "sh -c 'cd " + dir_.string() +
                                "/rank$OMPI_COMM_WORLD_RANK && exec " + KEEL_BINARY + " train " +
                                cfg + byte_run("data", out_dir()) + "'";
  Result r = run_ranks(2, each_rank);
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("the ranks were given different data (rank 1 differs from rank 0); every "
                       "rank must see the same data.train and data.validation"),
            std::string::npos)
      << r.out;
  EXPECT_FALSE(fs::exists(out_dir() + "/metrics.jsonl"));

  fs::remove_all(dir_ / "rank1" / "data");
  fs::copy(dir_ / "rank0" / "data", dir_ / "rank1" / "data");
  r = run_ranks(2, each_rank);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(losses(out_dir() + "/metrics.jsonl").size(), 3u);
}

}  // namespace
}  // namespace keel::test
