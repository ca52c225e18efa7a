// Checkpoints without MPI: state written by one sharding reads back into any other (rectangles,
// padding), meta.json round trips, the store's commit / latest / pruning, and each kind of bad
// checkpoint is an error that names the file and the problem.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <numeric>

#include "checkpoint_test_util.h"
#include "file_test_util.h"
#include "kernels/error.h"
#include "kernels/quantize.h"
#include "parallel/zero_layout.h"
#include "runtime/store/checkpoint.h"
#include "runtime/store/safetensors.h"

namespace keel::runtime {
namespace {

namespace fs = std::filesystem;

using CheckpointTest = keel::testing::FileTest;
using keel::testing::expect_error;
using namespace keel::runtime::checkpoint_testing;  // NOLINT: the checkpoint tests' scaffolding

TEST_F(CheckpointTest, AnyShardingReadsWhatAnyOtherWrote) {
  const std::vector<std::vector<float>> full = all_full_values();
  for (int written : {1, 2, 3, 4}) {
    const std::string dir = dir_ + "/w" + std::to_string(written);
    fs::create_directories(dir);
    Sharded from = shard(written, full);
    write_checkpoint(dir, written, from);
    const CheckpointInfo info = read_checkpoint_info(dir);
    EXPECT_EQ(info.step, 7);
    EXPECT_EQ(info.samples_consumed, 56);
    EXPECT_EQ(info.files.size(), static_cast<size_t>(written));
    for (int reading : {1, 2, 3, 4, 5}) {
      // Each reading rank's shards equal what packing the full tensors gives, padding zero.
      const Sharded want = shard(reading, full);
      Sharded got = shard(reading, full);
      for (auto& r : got.regions) std::fill(r.begin(), r.end(), 9.0f);
      for (int k = 0; k < reading; ++k) read_state(dir, info, got.pieces(k));
      for (int k = 0; k < reading; ++k)
        for (size_t i = 0; i < kSpecs.size(); ++i) {
          const auto& sh = want.layout.shard(i);
          const auto a = want.regions[static_cast<size_t>(k)].begin() + sh.offset;
          const auto b = got.regions[static_cast<size_t>(k)].begin() + sh.offset;
          EXPECT_TRUE(std::equal(a, a + sh.elems, b))
              << kSpecs[i].name << ": written by " << written << ", rank " << k << " of "
              << reading;
        }
    }
  }
}

// State every rank keeps whole (Adafactor's means of a matrix's unsplit side) is in every
// rank's file: any layout reads it once, and a value no file holds is still an error.
TEST_F(CheckpointTest, StateEveryRankHoldsWholeReadsOnce) {
  const std::vector<float> whole = {1, 2, 3, 4, 5};
  CheckpointInfo info = info_for(3);
  info.shapes = {{"means", {5, 1}}};
  for (int k = 0; k < 3; ++k) {
    std::vector<float> copy = whole;
    write_state_file(dir_ + "/" + state_file_name(k),
                     {{"means", 5, 1, {0, 0, 5, 1, 1}, copy.data(), 5}});
  }
  std::vector<float> got(6, 9.0f);  // a rank's part, rows [2, 5), and a padding row
  read_state(dir_, info, {{"means", 5, 1, {2, 0, 3, 1, 1}, got.data(), 4}});
  EXPECT_EQ(got, (std::vector<float>{3, 4, 5, 0, 9, 9}));
  std::vector<float> all(5, 9.0f);
  read_state(dir_, info, {{"means", 5, 1, {0, 0, 5, 1, 1}, all.data(), 5}});
  EXPECT_EQ(all, whole);

  // Files that each hold the same part only: the rest is missing, not covered three times.
  for (int k = 0; k < 3; ++k) {
    std::vector<float> part = {1, 2};
    write_state_file(dir_ + "/" + state_file_name(k),
                     {{"means", 5, 1, {0, 0, 2, 1, 1}, part.data(), 2}});
  }
  EXPECT_THROW(read_state(dir_, info, {{"means", 5, 1, {0, 0, 5, 1, 1}, all.data(), 5}}), Error);
}

// 8-bit codes come back as values of any rectangle, each dequantized with the absmax of the block
// of the buffer its writer cut (a row-split writer with a padding row, a column-split one), and a
// tensor another writer kept in fp32 is read as it is; codes without their absmax are an error.
TEST_F(CheckpointTest, EightBitCodesReadBackAsValuesOfAnyRectangle) {
  const kernels::cpu::QuantMap map = kernels::cpu::dynamic_map(true);
  const Dequantization q{"m_absmax", 4, &map};
  CheckpointInfo info = info_for(2);
  info.shapes = {{"m", {6, 4}}, {"m_absmax", {4, 1}}, {"w", {2, 8}}, {"w_absmax", {4, 1}}};
  // m: rank 0 holds rows [0, 3) as codes in a 4 x 4 buffer (blocks of 4: one per row), rank 1
  // rows [3, 6) in fp32. w: each rank 4 columns, codes in 2 x 4 buffers (blocks of 4: one a row).
  // A file holds the absmax of its own blocks only, as its rows of the stacked tensor.
  std::vector<uint8_t> m_codes(16), w_codes0(8), w_codes1(8);
  for (size_t i = 0; i < 16; ++i) m_codes[i] = static_cast<uint8_t>(17 * i + 3);
  for (size_t i = 0; i < 8; ++i)
    w_codes0[i] = static_cast<uint8_t>(31 * i + 1), w_codes1[i] = static_cast<uint8_t>(7 * i + 99);
  std::vector<float> m_absmax = {1.0f, 2.0f, 4.0f, 8.0f}, m_rest(12);
  std::iota(m_rest.begin(), m_rest.end(), 100.0f);
  std::vector<float> w_absmax0 = {3.0f, 5.0f}, w_absmax1 = {7.0f, 11.0f};
  write_state_file(dir_ + "/" + state_file_name(0),
                   {{"m", 6, 4, {0, 0, 3, 4, 4}, nullptr, 16, m_codes.data()},
                    {"m_absmax", 4, 1, {0, 0, 4, 1, 1}, m_absmax.data(), 4},
                    {"w", 2, 8, {0, 0, 2, 4, 4}, nullptr, 8, w_codes0.data()},
                    {"w_absmax", 4, 1, {0, 0, 2, 1, 1}, w_absmax0.data(), 2}});
  write_state_file(dir_ + "/" + state_file_name(1),
                   {{"m", 6, 4, {3, 0, 3, 4, 4}, m_rest.data(), 12},
                    {"w", 2, 8, {0, 4, 2, 4, 4}, nullptr, 8, w_codes1.data()},
                    {"w_absmax", 4, 1, {2, 0, 2, 1, 1}, w_absmax1.data(), 2}});

  const StateReader reader(dir_, info);
  std::vector<float> got(3 * 4, -1.0f);  // rows [2, 5) of m
  reader.read_dequantized({"m", 6, 4, {2, 0, 3, 4, 4}, got.data(), 12}, q);
  for (int c = 0; c < 4; ++c) {
    EXPECT_EQ(got[static_cast<size_t>(c)], map[m_codes[static_cast<size_t>(8 + c)]] * 4.0f);
    EXPECT_EQ(got[static_cast<size_t>(4 + c)], m_rest[static_cast<size_t>(c)]);
    EXPECT_EQ(got[static_cast<size_t>(8 + c)], m_rest[static_cast<size_t>(4 + c)]);
  }
  std::vector<float> wide(2 * 8, -1.0f);  // w whole, columns [3, 6) of it in a second read
  reader.read_dequantized({"w", 2, 8, {0, 0, 2, 8, 8}, wide.data(), 16}, {"w_absmax", 4, &map});
  for (size_t r = 0; r < 2; ++r)
    for (size_t c = 0; c < 4; ++c) {
      EXPECT_EQ(wide[r * 8 + c], map[w_codes0[r * 4 + c]] * w_absmax0[r]);
      EXPECT_EQ(wide[r * 8 + 4 + c], map[w_codes1[r * 4 + c]] * w_absmax1[r]);
    }
  std::vector<float> middle(2 * 3, -1.0f);
  reader.read_dequantized({"w", 2, 8, {0, 3, 2, 3, 3}, middle.data(), 6}, {"w_absmax", 4, &map});
  for (size_t r = 0; r < 2; ++r)
    for (size_t c = 0; c < 3; ++c) EXPECT_EQ(middle[r * 3 + c], wide[r * 8 + 3 + c]);

  // Codes whose scales are missing (or in blocks too small for them) are a clear error.
  std::vector<float> all(24);
  try {
    reader.read_dequantized({"m", 6, 4, {0, 0, 6, 4, 4}, all.data(), 24}, {"none", 4, &map});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds 'm' as 8-bit codes but not their scales 'none'"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(reader.read_dequantized({"m", 6, 4, {0, 0, 6, 4, 4}, all.data(), 24},
                                       {"m_absmax", 2, &map}),  // 8 blocks of 2 would be needed
               Error);

  // Codes and their scales are checked against their checksums like any tensor.
  for (const std::string tensor : {"m", "m_absmax"}) {
    const std::string path = dir_ + "/" + state_file_name(0);
    const std::string bytes = file_text(path);
    flip_bit(path, SafeTensorsReader(path).file_offset(tensor) + 1, 2);
    expect_error(
        [&] {
          StateReader(dir_, info).read_dequantized({"m", 6, 4, {0, 0, 6, 4, 4}, all.data(), 24}, q);
        },
        "tensor '" + tensor + "' does not match its checksum");
    write_file(path, bytes);
  }
}

TEST_F(CheckpointTest, BadCheckpointsAreClearErrors) {
  std::vector<std::vector<float>> full;
  for (const auto& p : kSpecs) full.push_back(full_values(p, 1.0f));
  Sharded s = shard(2, full);
  write_checkpoint(dir_, 2, s);
  CheckpointInfo info = read_checkpoint_info(dir_);
  Sharded into = shard(1, full);

  // Another model shape: the tensor, both shapes and the checkpoint are named.
  std::vector<StatePiece> pieces = into.pieces(0);
  pieces[0].rows = 12;
  pieces[0].rect.rows = 12;
  EXPECT_THROW(
      {
        try {
          read_state(dir_, info, pieces);
        } catch (const std::exception& e) {
          EXPECT_NE(std::string(e.what()).find("'tall' is 11x4 in checkpoint"), std::string::npos)
              << e.what();
          EXPECT_NE(std::string(e.what()).find("12x4 in this model"), std::string::npos);
          throw;
        }
      },
      std::exception);
  // A tensor the checkpoint lacks.
  pieces = into.pieces(0);
  pieces[1].name = "optimizer.exp_avg.wide";
  EXPECT_THROW(read_state(dir_, info, pieces), std::exception);

  // A rank file missing: named, with how many ranks wrote the checkpoint.
  fs::rename(dir_ + "/rank_00001.safetensors", dir_ + "/moved");
  try {
    read_state(dir_, info, into.pieces(0));
    ADD_FAILURE() << "a missing rank file must fail";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("missing rank_00001.safetensors"), std::string::npos)
        << e.what();
  }
  // meta.json not listing it: values uncovered.
  info.files = {state_file_name(0)};
  info.sums.resize(1);
  try {
    read_state(dir_, info, into.pieces(0));
    ADD_FAILURE() << "values no file holds must fail";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("values of 'tall'"), std::string::npos) << e.what();
  }

  // meta.json: missing, damaged, a field missing, another format.
  const std::string meta = dir_ + "/meta.json";
  auto expect_info_error = [&](const std::string& needle) {
    try {
      read_checkpoint_info(dir_);
      ADD_FAILURE() << "expected an error with '" << needle << "'";
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  std::ofstream(meta) << "{\"format\": \"keel-checkpoint\", \"version\": 1, \"step\": ";
  expect_info_error("is not valid JSON");
  std::ofstream(meta) << R"({"format": "keel-checkpoint", "version": 1, "step": 3})";
  expect_info_error("a field is missing");
  std::ofstream(meta) << R"({"format": "other", "version": 1})";
  expect_info_error("is not a keel checkpoint");
  std::ofstream(meta) << R"({"format": "keel-checkpoint", "version": 9})";
  expect_info_error("version 9");
  fs::remove(meta);
  expect_info_error("meta.json is missing");
}

// Every rank's state read on one rank: every stored tensor of every file is read.
void read_everything(const std::string& dir) {
  const CheckpointInfo info = read_checkpoint_info(dir);
  Sharded got = shard(1, all_full_values());
  read_state(dir, info, got.pieces(0));
}

// A copy of the good checkpoint in dir/good, as dir/<name>, to damage.
std::string copy_of(const std::string& dir, const std::string& name) {
  fs::copy(dir + "/good", dir + "/" + name);
  return dir + "/" + name;
}

// One flipped bit anywhere a checkpoint's meaning lies is an error that names the file (and the
// tensor): in a tensor's bytes, read whole into the piece (rank 0's 'tall') or read in parts
// (rank 1's 'tall', stored with a padding row; 'wide', split along its columns, read row by row);
// in a state file's header, as a changed rectangle that still parses and still covers every
// value; in meta.json, as a changed number or even a change JSON reads the same.
TEST_F(CheckpointTest, ChecksumsFindOneFlippedBitAnywhere) {
  const std::string good = dir_ + "/good";
  fs::create_directories(good);
  Sharded s = shard(2, all_full_values());
  write_checkpoint(good, 2, s);
  read_everything(good);

  const std::string rank0 = "/rank_00000.safetensors", rank1 = "/rank_00001.safetensors";
  struct Flip {
    std::string file, tensor;
    size_t byte;
  };
  for (const Flip& f : {Flip{rank0, "tall", 0}, Flip{rank1, "tall", 77}, Flip{rank1, "wide", 5},
                        Flip{rank0, "tiny", 3}}) {
    const std::string dir = copy_of(dir_, "data" + f.file.substr(6, 5) + f.tensor);
    const std::string path = dir + f.file;
    flip_bit(path, SafeTensorsReader(path).file_offset(f.tensor) + f.byte, 6);
    expect_error([&] { read_everything(dir); },
                 path + ": tensor '" + f.tensor + "' does not match its checksum");
  }

  // Rank 1's rectangle of 'tall' moved up one row: rows 5-9 instead of 6-10.
  std::string dir = copy_of(dir_, "header");
  replace_once(dir + rank1, R"("tall":"6 0 5 4")", R"("tall":"5 0 5 4")");
  expect_error([&] { read_everything(dir); },
               dir + rank1 +
                   ": its header (the names, shapes, rectangles and checksums of its "
                   "tensors) does not match the checksum meta.json records");
  // A file cut short, or grown.
  dir = copy_of(dir_, "short");
  write_file(dir + rank0, file_text(dir + rank0).substr(1));
  expect_error([&] { read_everything(dir); }, rank0.substr(1) + " is ");
  expect_error([&] { read_everything(dir); }, " bytes but meta.json records ");

  for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{
           {R"("samples_consumed": 56)", R"("samples_consumed": 57)"},
           {R"("step": 7)", R"("step":  7)"},
           {R"("rank_00001.safetensors": {)", R"("rank_00001.safetensors":{)"}}) {
    dir = copy_of(dir_, "meta" + std::to_string(from.size() + to.size()));
    replace_once(dir + "/meta.json", from, to);
    expect_error([&] { read_checkpoint_info(dir); },
                 dir + "/meta.json does not match its checksum");
  }
  // Its checksum line damaged, or gone from a version-2 file.
  dir = copy_of(dir_, "meta_line");
  replace_once(dir + "/meta.json", R"("checksum": "crc32c:)", R"("checksum": "crc32c:x)");
  expect_error([&] { read_checkpoint_info(dir); }, "its checksum line is damaged");
  std::string text = file_text(dir + "/meta.json");
  write_file(dir + "/meta.json", "{" + text.substr(text.find('\n', 2)));
  expect_error([&] { read_checkpoint_info(dir); }, "has no checksum line, which version 2 writes");
}

// An error about a damaged checkpoint names the newest one before it to resume from instead.
TEST_F(CheckpointTest, DamageNamesTheCheckpointToResumeFromInstead) {
  const CheckpointStore store(dir_ + "/checkpoints");
  Sharded s = shard(1, all_full_values());
  for (int64_t step : {2, 4, 6}) {
    store.begin(step);
    write_checkpoint(store.staging(step), 1, s);
    store.commit(step, 0);
  }
  const std::string last = store.root() + "/step_00000006";
  flip_bit(last + "/rank_00000.safetensors",
           SafeTensorsReader(last + "/rank_00000.safetensors").file_offset("wide"), 0);
  expect_error([&] { read_everything(last); },
               "use an earlier checkpoint instead (to resume training: --resume " + store.root() +
                   "/step_00000004, the newest before it; 'keel verify --all " + store.root() +
                   "' checks every one)");
  const std::string first = store.root() + "/step_00000002";
  replace_once(first + "/meta.json", R"("step": 7)", R"("step": 8)");
  expect_error([&] { read_everything(first); },
               store.root() + " holds no earlier checkpoint: start afresh (--resume none)");
}

// A checkpoint keel wrote before checksums (version 1) still reads, into any layout.
TEST_F(CheckpointTest, VersionOneCheckpointsStillRead) {
  const std::vector<std::vector<float>> full = all_full_values();
  Sharded from = shard(2, full);
  write_version_1_checkpoint(dir_, 2, from);
  EXPECT_EQ(file_text(dir_ + "/meta.json").find("checksum"), std::string::npos);
  const CheckpointInfo info = read_checkpoint_info(dir_);
  EXPECT_EQ(info.version, 1);
  EXPECT_TRUE(info.sums.empty());
  EXPECT_EQ(info.step, 7);
  // Written before tensor parallelism: one rank of each dimension but the data-parallel one.
  EXPECT_EQ(info.tensor_parallel_size, 1);
  EXPECT_EQ(info.pipeline_parallel_size, 1);
  EXPECT_EQ(info.expert_parallel_size, 1);
  EXPECT_EQ(written_by(info), "2 data-parallel ranks, ZeRO 2");
  for (int reading : {1, 3}) {
    const Sharded want = shard(reading, full);
    Sharded got = shard(reading, full);
    for (auto& r : got.regions) std::fill(r.begin(), r.end(), 9.0f);
    for (int k = 0; k < reading; ++k) {
      read_state(dir_, info, got.pieces(k));
      for (size_t i = 0; i < kSpecs.size(); ++i) {
        const auto& sh = want.layout.shard(i);
        const auto a = want.regions[static_cast<size_t>(k)].begin() + sh.offset;
        EXPECT_TRUE(
            std::equal(a, a + sh.elems, got.regions[static_cast<size_t>(k)].begin() + sh.offset))
            << kSpecs[i].name << ", rank " << k << " of " << reading;
      }
    }
  }
}

// meta.json records every dimension of the layout that wrote it, and messages name it.
TEST_F(CheckpointTest, MetaRecordsTheWholeLayout) {
  const std::vector<std::vector<float>> full = all_full_values();
  Sharded from = shard(4, full);
  CheckpointInfo info = info_for(4);
  info.data_parallel_size = 2;
  info.tensor_parallel_size = 2;
  info.zero_stage = 1;
  for (int k = 0; k < 4; ++k)
    info.sums.push_back(write_state_file(dir_ + "/" + state_file_name(k), from.pieces(k)));
  write_checkpoint_info(dir_, info);
  const nlohmann::json meta = nlohmann::json::parse(file_text(dir_ + "/meta.json"));
  EXPECT_EQ(meta["data_parallel_size"], 2);
  EXPECT_EQ(meta["tensor_parallel_size"], 2);
  EXPECT_EQ(meta["pipeline_parallel_size"], 1);
  EXPECT_EQ(meta["expert_parallel_size"], 1);
  const CheckpointInfo back = read_checkpoint_info(dir_);
  EXPECT_EQ(back.data_parallel_size, 2);
  EXPECT_EQ(back.tensor_parallel_size, 2);
  EXPECT_EQ(written_by(back), "4 ranks (2 tensor-parallel x 2 data-parallel), ZeRO 1");
  info.pipeline_parallel_size = 2;
  info.expert_parallel_size = 2;
  EXPECT_EQ(
      written_by(info),
      "8 ranks (2 tensor-parallel x 2 data-parallel x 2 pipeline, 2 expert-parallel), ZeRO 1");
  EXPECT_EQ(written_by(info_for(1)), "1 data-parallel rank, ZeRO 2");
}

void make_checkpoint(const CheckpointStore& store, int64_t step) {
  store.begin(step);
  std::ofstream(store.staging(step) + "/rank_00000.safetensors") << "x";
  CheckpointInfo info = info_for(1);
  info.step = step;
  info.sums = {StateFileSum{1, 0}};
  write_checkpoint_info(store.staging(step), info);
}

TEST_F(CheckpointTest, StoreCommitsPointsLatestAndPrunes) {
  const CheckpointStore store(dir_ + "/checkpoints");
  EXPECT_EQ(store.latest(), "");
  EXPECT_EQ(find_checkpoint("auto", dir_), "");
  EXPECT_EQ(find_checkpoint("none", dir_), "");
  for (int64_t step : {10, 20, 30, 40}) {
    make_checkpoint(store, step);
    EXPECT_EQ(store.commit(step, 2), store.root() + "/step_000000" + std::to_string(step));
  }
  // A save that crashed midway leaves its temporary directory; latest is untouched.
  make_checkpoint(store, 50);
  EXPECT_EQ(store.list(), (std::vector<std::string>{"step_00000030", "step_00000040"}));
  const std::string latest = store.root() + "/step_00000040";
  EXPECT_EQ(store.latest(), latest);
  EXPECT_EQ(find_checkpoint("auto", dir_), latest);
  EXPECT_EQ(find_checkpoint(dir_, "elsewhere"), latest);          // a run's output_dir
  EXPECT_EQ(find_checkpoint(store.root(), "elsewhere"), latest);  // a store
  EXPECT_EQ(find_checkpoint(store.root() + "/step_00000030", "x"), store.root() + "/step_00000030");
  EXPECT_THROW(find_checkpoint(dir_ + "/nothing", "x"), std::exception);
  // The next commit removes what the crash left.
  make_checkpoint(store, 60);
  store.commit(60, 0);
  EXPECT_FALSE(fs::exists(store.staging(50)));
  EXPECT_EQ(store.list().size(), 3u);  // keep 0: nothing pruned
  // latest naming a checkpoint that is gone is an error, not a fresh start.
  fs::remove_all(store.root() + "/step_00000060");
  EXPECT_THROW(store.latest(), std::exception);
}

}  // namespace
}  // namespace keel::runtime
