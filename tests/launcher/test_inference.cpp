// A trained run put to use: training.eval_steps logs validation loss, `keel eval` reproduces it
// from the checkpoint, `keel generate` continues a prompt (greedy, and sampled reproducibly by
// seed); the mistakes are clear errors.
#include <gtest/gtest.h>

#include <map>

#include "cli_util.h"
#include "runtime/train/tensorboard.h"

namespace keel::test {
namespace {

// The number after `prefix` in text, or NaN.
double number_after(const std::string& text, const std::string& prefix) {
  const size_t at = text.find(prefix);
  return at == std::string::npos ? std::nan("") : std::stod(text.substr(at + prefix.size()));
}

TEST_F(Cli, EvalAndGenerateFromATrainedRun) {
  const std::string prep = (dir_ / "prep").string();
  Result r = run("prepare data/kjv.txt.gz --vocab-size 512 --out " + prep);
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string cfg = write("c.yaml", kParallelModel);
  const std::string run_dir = out_dir();
  r = run("train " + cfg + " --set data.train=" + prep +
          " --set model.vocab_size=512 --set training.max_steps=12 --set training.eval_steps=6" +
          " --set data.max_eval_samples=10 --set training.save_steps=12" +
          " --set training.output_dir=" + run_dir);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("keel: validation "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("eval step 6 | loss "), std::string::npos) << r.out;
  const std::vector<double> eval = field(run_dir + "/metrics.jsonl", "eval_loss");
  ASSERT_EQ(eval.size(), 2u);  // steps 6 and 12
  EXPECT_LT(eval[1], eval[0]);
  const std::vector<double> loss = field(run_dir + "/metrics.jsonl", "loss");
  EXPECT_EQ(loss.size(), 12u);  // eval lines are apart
  EXPECT_NE(r.out.find("keel: loss curve in " + run_dir + "/loss.svg"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(run_dir + "/loss.svg"));

  // The same numbers as TensorBoard scalars (float), in one event file.
  if (runtime::tensorboard_available()) {
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(run_dir + "/tensorboard"))
      files.push_back(e.path().string());
    ASSERT_EQ(files.size(), 1u);
    std::map<std::string, std::vector<std::pair<int64_t, float>>> scalars;
    for (const runtime::TensorBoardScalar& s : runtime::read_tensorboard_scalars(files[0]))
      scalars[s.tag].emplace_back(s.step, s.value);
    ASSERT_EQ(scalars["train/loss"].size(), loss.size());
    for (size_t i = 0; i < loss.size(); ++i)
      EXPECT_EQ(scalars["train/loss"][i],
                std::make_pair(static_cast<int64_t>(i + 1), static_cast<float>(loss[i])));
    EXPECT_EQ(scalars["eval/loss"],
              (std::vector<std::pair<int64_t, float>>{{6, static_cast<float>(eval[0])},
                                                      {12, static_cast<float>(eval[1])}}));
    EXPECT_EQ(scalars["train/learning_rate"].size(), loss.size());
  }

  // keel eval: the same sequences and weights give the same loss.
  r = run("eval " + run_dir + " --max-samples 10");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NEAR(number_after(r.out, ": loss "), eval[1], 1e-5 * eval[1]) << r.out;
  EXPECT_NEAR(number_after(r.out, "perplexity "), std::exp(eval[1]), 1e-4 * std::exp(eval[1]))
      << r.out;
  EXPECT_NE(r.out.find("over 10 sequences"), std::string::npos) << r.out;
  r = run("eval " + run_dir + " --data data/kjv.txt.gz --max-samples 3 --batch-size 2");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("over 3 sequences"), std::string::npos) << r.out;

  // keel generate: the prompt, then its continuation.
  const std::string gen = "generate " + run_dir + " --prompt 'And God said' --max-new-tokens 16";
  r = run(gen + " --temperature 0");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("And God said"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tokens/s"), std::string::npos) << r.out;
  const Result a = run(gen + " --temperature 0.9 --top-k 40 --top-p 0.95 --seed 7 --num-samples 2");
  const Result b = run(gen + " --temperature 0.9 --top-k 40 --top-p 0.95 --seed 7 --num-samples 2");
  ASSERT_EQ(a.code, 0) << a.out;
  EXPECT_NE(a.out.find("--- sample 2 ---"), std::string::npos) << a.out;
  auto text_of = [](const std::string& out) {  // the samples, without the timing lines
    std::string kept, line;
    std::istringstream in(out);
    while (std::getline(in, line))
      if (line.rfind("keel: ", 0) != 0) kept += line + "\n";
    return kept;
  };
  EXPECT_EQ(text_of(a.out), text_of(b.out));

  r = run("generate " + run_dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("usage: keel generate CKPT --prompt TEXT"), std::string::npos) << r.out;
  r = run(gen + " --top-p 2");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("top_p must be in (0, 1], got 2"), std::string::npos) << r.out;
  r = run(gen + " --tmperature 1");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("unknown option '--tmperature' for 'keel generate'"), std::string::npos)
      << r.out;
  r = run("eval " + (dir_ / "nothing").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("holds no checkpoint and no trained model"), std::string::npos) << r.out;
}

TEST_F(Cli, EvalNeedsValidationData) {
  const std::string cfg = write("c.yaml", kParallelModel);
  // A text file has no validation split: eval_steps without data.validation is refused.
  expect_clean_failure(
      run("train " + cfg + " --set training.eval_steps=5 --set training.output_dir=" + out_dir()),
      "training.eval_steps is 5 but the run has no validation data");
  // No checkpoints: generate and eval take the run's final model.safetensors.
  Result r =
      run("train " + cfg + " --set training.max_steps=2 --set training.output_dir=" + out_dir());
  ASSERT_EQ(r.code, 0) << r.out;
  r = run("generate " + out_dir() + " --prompt 'In the' --max-new-tokens 3");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("keel: the final weights of " + out_dir()), std::string::npos) << r.out;
  r = run("eval " + out_dir());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("has no validation data (data.validation is 'auto'); give some with --data"),
            std::string::npos)
      << r.out;
}

// configs/demo.yaml, the README's demo (scripts/demo.sh), on the data its header prepares: a few
// steps with a validation loss, then samples.
TEST_F(Cli, DemoConfigTrainsOnPreparedDataAndSamples) {
  const std::string prep = (dir_ / "kjv-bpe4k").string();
  Result r = run("prepare data/kjv.txt.gz --vocab-size 4096 --out " + prep);
  ASSERT_EQ(r.code, 0) << r.out;
  r = run("train configs/demo.yaml --set data.train=" + prep +
          " --set training.max_steps=2 --set training.eval_steps=2 --set data.max_eval_samples=2" +
          " --set training.per_device_train_batch_size=1 --set training.save_steps=2" +
          " --set training.output_dir=" + out_dir());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(field(out_dir() + "/metrics.jsonl", "eval_loss").size(), 1u);
  r = run("generate " + out_dir() +
          " --prompt 'And God said' --max-new-tokens 8 --temperature 0.8 --top-k 40" +
          " --num-samples 3 --seed 1");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("--- sample 3 ---"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace keel::test
