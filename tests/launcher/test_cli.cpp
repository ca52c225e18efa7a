// The keel program end to end: help, config mistakes (one clear line, non-zero exit, nothing
// written), and the demo config actually learning.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace {

namespace fs = std::filesystem;

struct Result {
  int code;
  std::string out;  // stdout and stderr together
};

Result run(const std::string& args) {
  const std::string cmd = std::string(KEEL_BINARY) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("keel_cli_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
    return (dir_ / name).string();
  }
  std::string out_dir() const { return (dir_ / "out").string(); }
  // A bad run: exit code ≠ 0, one line of error, and nothing written.
  void expect_clean_failure(const Result& r, const std::string& needle) {
    EXPECT_NE(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("keel: error: "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(needle), std::string::npos) << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
    EXPECT_FALSE(fs::exists(out_dir())) << "a failed run must write nothing";
  }
  fs::path dir_;
};

TEST_F(Cli, Help) {
  Result r = run("--help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("train"), std::string::npos);
  r = run("train --help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("--set"), std::string::npos);
  r = run("bogus");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("unknown command 'bogus'"), std::string::npos);
}

TEST_F(Cli, UnknownKeySuggestsTheClosest) {
  const std::string cfg =
      write("c.yaml", "training:\n  learnig_rate: 0.1\n  output_dir: " + out_dir() +
                          "\ndata:\n  train: data/kjv.txt.gz\n");
  expect_clean_failure(run("train " + cfg), "training.learning_rate");
}

TEST_F(Cli, UnknownOverrideKey) {
  expect_clean_failure(run("train configs/tiny.yaml --set training.output_dir=" + out_dir() +
                           " --set model.hiden_size=64"),
                       "model.hidden_size");
}

TEST_F(Cli, WrongType) {
  expect_clean_failure(run("train configs/tiny.yaml --set training.output_dir=" + out_dir() +
                           " --set training.max_steps=lots"),
                       "training.max_steps");
}

TEST_F(Cli, ImpossibleShapes) {
  expect_clean_failure(run("train configs/tiny.yaml --set training.output_dir=" + out_dir() +
                           " --set model.hidden_size=100"),
                       "model.num_attention_heads");
  expect_clean_failure(run("train configs/tiny.yaml --set training.output_dir=" + out_dir() +
                           " --set model.num_key_value_heads=4"),
                       "model.num_key_value_heads");
}

TEST_F(Cli, MissingDataFile) {
  expect_clean_failure(run("train configs/tiny.yaml --set training.output_dir=" + out_dir() +
                           " --set data.train=/nonexistent/corpus.txt"),
                       "/nonexistent/corpus.txt");
}

// The demo learns: after 40 steps of configs/tiny.yaml the loss is far below the corpus's unigram
// entropy (3.03 nats per byte), which letter frequencies alone cannot beat.
TEST_F(Cli, TinyConfigLearns) {
  const Result r =
      run("train configs/tiny.yaml --set training.max_steps=40 "
          "--set training.warmup_steps=5 --set training.logging_steps=10 "
          "--set training.output_dir=" +
          out_dir());
  ASSERT_EQ(r.code, 0) << r.out;
  std::ifstream f(out_dir() + "/metrics.jsonl");
  std::string line, last;
  int lines = 0;
  while (std::getline(f, line)) last = line, ++lines;
  ASSERT_EQ(lines, 5) << "steps 1, 10, 20, 30, 40";
  const size_t at = last.find("\"loss\": ");
  ASSERT_NE(at, std::string::npos) << last;
  const double loss = std::stod(last.substr(at + 8));
  std::printf("tiny.yaml loss after 40 steps: %.4f\n", loss);
  EXPECT_LT(loss, 2.6) << "the demo should beat the 3.03-nat unigram entropy clearly";
}

}  // namespace
