// keel verify's checks (runtime/store/checkpoint_verify.h): a good checkpoint of either version
// passes with a line a file; every damaged tensor, header, file and meta.json is a problem that
// names it, all of them in one pass; values no file holds are named too.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "checkpoint_test_util.h"
#include "file_test_util.h"
#include "runtime/store/checkpoint.h"
#include "runtime/store/checkpoint_verify.h"
#include "runtime/store/safetensors.h"

namespace keel::runtime {
namespace {

namespace fs = std::filesystem;
using namespace keel::runtime::checkpoint_testing;  // NOLINT: the checkpoint tests' scaffolding
using CheckpointVerifyTest = keel::testing::FileTest;

std::string joined(const std::vector<std::string>& lines) {
  std::string out;
  for (const std::string& l : lines) out += l + "\n";
  return out;
}

bool has(const std::vector<std::string>& lines, const std::string& part) {
  return joined(lines).find(part) != std::string::npos;
}

TEST_F(CheckpointVerifyTest, AGoodCheckpointPassesWithALineAFile) {
  Sharded s = shard(2, all_full_values());
  write_checkpoint(dir_, 2, s);
  const CheckpointCheck c = verify_checkpoint(dir_);
  EXPECT_TRUE(c.good()) << joined(c.problems);
  ASSERT_EQ(c.lines.size(), 3u);
  EXPECT_NE(c.lines[0].find("meta.json               ok: step 7, 2 state files, 4 tensors, "
                            "checksum matches; written by 2 data-parallel ranks, ZeRO 2"),
            std::string::npos)
      << c.lines[0];
  EXPECT_NE(c.lines[1].find("rank_00000.safetensors  ok: 4 tensors"), std::string::npos);
  EXPECT_NE(c.lines[2].find("rank_00001.safetensors  ok: 4 tensors"), std::string::npos);
  EXPECT_NE(c.lines[2].find("checksums match"), std::string::npos);
}

TEST_F(CheckpointVerifyTest, AVersionOneCheckpointPassesOnItsStructure) {
  Sharded s = shard(2, all_full_values());
  write_version_1_checkpoint(dir_, 2, s);
  const CheckpointCheck c = verify_checkpoint(dir_);
  EXPECT_TRUE(c.good()) << joined(c.problems);
  EXPECT_TRUE(has(c.lines, "version 1: written before checksums")) << joined(c.lines);
  EXPECT_FALSE(has(c.lines, "checksums match")) << joined(c.lines);
}

// Two damaged tensors in two files and a missing third: all named in one pass.
TEST_F(CheckpointVerifyTest, EveryProblemIsNamedInOnePass) {
  Sharded s = shard(3, all_full_values());
  write_checkpoint(dir_, 3, s);
  const std::string rank0 = dir_ + "/rank_00000.safetensors",
                    rank1 = dir_ + "/rank_00001.safetensors";
  flip_bit(rank0, SafeTensorsReader(rank0).file_offset("wide") + 2, 1);
  flip_bit(rank0, SafeTensorsReader(rank0).file_offset("tall") + 9, 7);
  flip_bit(rank1, SafeTensorsReader(rank1).file_offset("vector"), 0);
  fs::remove(dir_ + "/rank_00002.safetensors");
  const CheckpointCheck c = verify_checkpoint(dir_);
  EXPECT_FALSE(c.good());
  ASSERT_EQ(c.problems.size(), 4u) << joined(c.problems);
  EXPECT_TRUE(has(c.problems, rank0 + ": tensor 'tall' does not match its checksum"));
  EXPECT_TRUE(has(c.problems, rank0 + ": tensor 'wide' does not match its checksum"));
  EXPECT_TRUE(has(c.problems, rank1 + ": tensor 'vector' does not match its checksum"));
  EXPECT_TRUE(has(c.problems, dir_ + "/rank_00002.safetensors is missing"));
  EXPECT_TRUE(has(c.lines, "rank_00000.safetensors  DAMAGED: 2 of its 4 tensors"))
      << joined(c.lines);
  EXPECT_TRUE(has(c.lines, "rank_00002.safetensors  MISSING")) << joined(c.lines);
}

TEST_F(CheckpointVerifyTest, DamagedHeadersAndMetaJsonAreNamed) {
  Sharded s = shard(2, all_full_values());
  write_checkpoint(dir_, 2, s);
  const std::string rank1 = dir_ + "/rank_00001.safetensors";
  replace_once(rank1, R"("tall":"6 0 5 4")", R"("tall":"5 0 5 4")");
  CheckpointCheck c = verify_checkpoint(dir_);
  ASSERT_EQ(c.problems.size(), 1u) << joined(c.problems);
  EXPECT_TRUE(has(c.problems, rank1 + ": its header")) << joined(c.problems);
  EXPECT_TRUE(has(c.lines, "rank_00001.safetensors  DAMAGED: its size or header"));

  replace_once(dir_ + "/meta.json", R"("zero_stage": 2)", R"("zero_stage": 3)");
  c = verify_checkpoint(dir_);
  ASSERT_EQ(c.problems.size(), 1u) << joined(c.problems);
  EXPECT_TRUE(has(c.problems, dir_ + "/meta.json does not match its checksum"));
  EXPECT_EQ(c.problems[0].find("earlier checkpoint"), std::string::npos)
      << "keel verify names the fix once, not in each problem";
  EXPECT_TRUE(has(c.lines, "meta.json               DAMAGED"));
}

// Files that are each whole but together lack a tensor's values (a checkpoint whose meta.json
// lists fewer files than wrote it), or hold a tensor meta.json does not list.
TEST_F(CheckpointVerifyTest, ValuesNoFileHoldsAreNamed) {
  Sharded s = shard(2, all_full_values());
  CheckpointInfo info = info_for(1);
  info.sums = {write_state_file(dir_ + "/" + state_file_name(0), s.pieces(0))};
  info.shapes.erase("tiny");
  write_checkpoint_info(dir_, info);
  const CheckpointCheck c = verify_checkpoint(dir_);
  EXPECT_TRUE(has(c.problems, "its files hold 24 of the 44 values of 'tall'"))
      << joined(c.problems);
  EXPECT_TRUE(has(c.problems, "tensor 'tiny' is not one meta.json lists")) << joined(c.problems);
}

}  // namespace
}  // namespace keel::runtime
