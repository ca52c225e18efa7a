// keel prepare end to end: text in, a tokenizer and shards out, a run trains on them; the
// mistakes a user makes with prepared data are one clear line each.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <iterator>

#include "cli_util.h"

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

}  // namespace
}  // namespace keel::test
