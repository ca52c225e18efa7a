// safetensors reading and writing: round trips, every kind of corrupt file the reader must refuse
// (with the file named), and compatibility with the real format through the goldens that
// tests/reference/llama_ref.py writes with Python's json and struct.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "runtime/store/safetensors.h"

namespace keel::runtime {
namespace {

namespace fs = std::filesystem;

class SafeTensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("keel_safetensors_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // A file written byte by byte: the length prefix (header.size() unless given), the header padded
  // with spaces to a multiple of 8, then data_bytes zero bytes.
  std::string write_raw(const std::string& name, std::string header, size_t data_bytes,
                        std::optional<uint64_t> length = std::nullopt) const {
    header.append((8 - header.size() % 8) % 8, ' ');
    const uint64_t n = length.value_or(header.size());
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[static_cast<size_t>(i)] = static_cast<char>(n >> (8 * i));
    bytes += header;
    bytes.append(data_bytes, '\0');
    return write_bytes(name, bytes);
  }

  std::string write_bytes(const std::string& name, const std::string& bytes) const {
    const std::string p = path(name);
    std::ofstream(p, std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return p;
  }

  fs::path dir_;
};

// The error a reader of `file` raises; fails the test when there is none.
std::string read_error(const std::string& file) {
  try {
    SafeTensorsReader reader(file);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "reading " << file << " raised no error";
  return "";
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST_F(SafeTensorsTest, RoundTripsDtypesShapesAndMetadata) {
  std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e-30f};
  std::vector<double> f64 = {3.141592653589793, -1e300, 5e-324, 2.0};
  std::vector<int32_t> i32 = {-100, 0, 7, 2147483647, -2147483647 - 1, 42};
  std::vector<uint16_t> bf16 = {f32_to_bf16(1.0f), f32_to_bf16(-3.5f), f32_to_bf16(0.1f)};
  std::vector<uint8_t> u8 = {0, 1, 2, 255, 128, 9, 10};  // odd size: later tensors stay aligned?
  std::vector<int64_t> i64 = {-5000000000LL};
  std::vector<float> empty;
  const std::vector<std::pair<std::string, Tensor>> tensors = {
      {"u8.odd", Tensor(u8.data(), DType::U8, {7})},
      {"model.w", Tensor(f32.data(), DType::F32, {2, 3})},
      {"bf16", Tensor(bf16.data(), DType::BF16, {3, 1})},
      {"f64", Tensor(f64.data(), DType::F64, {2, 1, 2})},
      {"ids", Tensor(i32.data(), DType::I32, {3, 2})},
      {"scalar", Tensor(i64.data(), DType::I64, Shape{})},
      {"empty", Tensor(empty.data(), DType::F32, {0, 4})},
  };
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"hidden_size", "48"}, {"note", "quotes \" and unicode \xc3\xa9"}};
  const std::string file = path("round.safetensors");
  const std::string header = write_safetensors(file, tensors, metadata);
  EXPECT_FALSE(fs::exists(file + ".tmp"));
  uint64_t header_len = 0;
  std::ifstream(file, std::ios::binary).read(reinterpret_cast<char*>(&header_len), 8);
  EXPECT_EQ(header_len % 8, 0u) << "the header is padded to keep the data 8-byte aligned";

  SafeTensorsReader reader(file);
  EXPECT_EQ(reader.path(), file);
  // The header as written (length and JSON) is the one read, and ends where the data begins.
  EXPECT_EQ(header.size(), 8 + header_len);
  EXPECT_EQ(reader.header(), header);
  EXPECT_EQ(reader.header().data() + reader.header().size(),
            static_cast<const char*>(reader.get("f64").data()));
  EXPECT_EQ(reader.metadata(), metadata);
  EXPECT_EQ(reader.names(), (std::vector<std::string>{"bf16", "empty", "f64", "ids", "model.w",
                                                      "scalar", "u8.odd"}));
  for (const auto& [name, want] : tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(reader.contains(name));
    const Tensor got = reader.get(name);
    EXPECT_EQ(got.dtype(), want.dtype());
    EXPECT_EQ(got.shape(), want.shape()) << got.shape().str() << " vs " << want.shape().str();
    EXPECT_TRUE(got.device().is_cpu());
    ASSERT_EQ(got.nbytes(), want.nbytes());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(got.data()) % dtype_size(got.dtype()), 0u);
    if (want.nbytes() > 0) {
      EXPECT_EQ(std::memcmp(got.data(), want.data(), want.nbytes()), 0);
    }
  }
  EXPECT_EQ(reader.get("scalar").rank(), 0);
  EXPECT_EQ(reader.get("empty").numel(), 0);
  EXPECT_FALSE(reader.contains("absent"));
}

TEST_F(SafeTensorsTest, EmptyFileListAndNoMetadataRoundTrip) {
  const std::string file = path("nothing.safetensors");
  write_safetensors(file, {});
  SafeTensorsReader reader(file);
  EXPECT_TRUE(reader.names().empty());
  EXPECT_TRUE(reader.metadata().empty());
}

TEST_F(SafeTensorsTest, RewriteReplacesTheFileWhole) {
  const std::string file = path("w.safetensors");
  std::vector<double> big(1000, 1.0), small = {2.0};
  write_safetensors(file, {{"x", Tensor(big.data(), DType::F64, {1000})}});
  write_safetensors(file, {{"y", Tensor(small.data(), DType::F64, {1})}});
  SafeTensorsReader reader(file);
  EXPECT_EQ(reader.names(), std::vector<std::string>{"y"});
  EXPECT_EQ(reader.get("y").data_as<double>()[0], 2.0);
  EXPECT_FALSE(fs::exists(file + ".tmp"));
}

TEST_F(SafeTensorsTest, MovedReaderKeepsItsViews) {
  const std::string file = path("m.safetensors");
  std::vector<float> v = {1.0f, 2.0f, 3.0f};
  write_safetensors(file, {{"v", Tensor(v.data(), DType::F32, {3})}});
  SafeTensorsReader a(file);
  const Tensor before = a.get("v");
  SafeTensorsReader b(std::move(a));
  SafeTensorsReader c(file);
  c = std::move(b);
  EXPECT_EQ(c.get("v").data(), before.data());
  EXPECT_EQ(c.get("v").f32()[2], 3.0f);
}

TEST_F(SafeTensorsTest, CorruptFilesAreRefusedNamingTheFile) {
  const std::string f32x4 = R"("a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]})";
  struct Case {
    const char* what;
    std::string header;
    size_t data_bytes;
    std::optional<uint64_t> length;
    const char* expected;
  };
  const std::vector<Case> cases = {
      {"header length beyond the file", "{" + f32x4 + "}", 16, 1000, "runs past the end"},
      {"header length near 2^64", "{" + f32x4 + "}", 16, UINT64_MAX, "runs past the end"},
      {"invalid JSON", R"({"a": {"dtype": )", 16, {}, "not valid JSON"},
      {"header not an object", "[1, 2]", 0, {}, "must be a JSON object"},
      {"tensor not an object", R"({"a": 3})", 0, {}, "must be described by an object"},
      {"missing data_offsets",
       R"({"a":{"dtype":"F32","shape":[4]}})",
       16,
       {},
       "needs 'dtype', 'shape' and 'data_offsets'"},
      {"unknown dtype",
       R"({"a":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})",
       4,
       {},
       "unknown dtype 'F8_E4M3'"},
      {"negative dimension",
       R"({"a":{"dtype":"F32","shape":[-1,4],"data_offsets":[0,16]}})",
       16,
       {},
       "non-negative integers"},
      {"too many dimensions",
       R"({"a":{"dtype":"U8","shape":[1,1,1,1,1,1,1],"data_offsets":[0,1]}})",
       1,
       {},
       "at most 6 dimensions"},
      {"shape does not match offsets",
       R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}})",
       16,
       {},
       "needs 24 bytes"},
      {"element count overflows",
       R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}})",
       16,
       {},
       "more than 2^64"},
      {"offsets beyond the data",
       R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})",
       16,
       {},
       "outside the 16-byte data buffer"},
      {"offsets reversed",
       R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}})",
       16,
       {},
       "outside"},
      {"negative offset",
       R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[-16,0]}})",
       16,
       {},
       "two non-negative integers"},
      {"overlapping tensors",
       "{" + f32x4 + R"(,"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
       24,
       {},
       "overlap"},
      {"gap between tensors",
       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
       R"("b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
       16,
       {},
       "belong to no tensor"},
      {"trailing bytes", "{" + f32x4 + "}", 24, {}, "last 8 bytes"},
      {"misaligned tensor",
       R"({"i":{"dtype":"I32","shape":[1],"data_offsets":[0,4]},)"
       R"("d":{"dtype":"F64","shape":[1],"data_offsets":[4,12]}})",
       12,
       {},
       "not a multiple of its element size"},
      {"metadata not strings",
       R"({"__metadata__":{"k":1}})",
       0,
       {},
       "metadata 'k' must be a string"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    SCOPED_TRACE(c.what);
    const std::string file =
        write_raw("bad" + std::to_string(i) + ".safetensors", c.header, c.data_bytes, c.length);
    const std::string message = read_error(file);
    EXPECT_TRUE(has(message, file)) << message;
    EXPECT_TRUE(has(message, c.expected)) << message;
  }
  // The same well-formed header is accepted, so the cases above fail for the reason they name.
  EXPECT_NO_THROW(SafeTensorsReader(write_raw("good.safetensors", "{" + f32x4 + "}", 16)));
}

TEST_F(SafeTensorsTest, ShortOrMissingFilesAreRefusedNamingTheFile) {
  for (const std::string& bytes : {std::string(), std::string("\x10\0\0\0\0", 5)}) {
    const std::string file = write_bytes("short.safetensors", bytes);
    const std::string message = read_error(file);
    EXPECT_TRUE(has(message, file) && has(message, "fewer than the 8-byte")) << message;
  }
  const std::string missing = path("missing.safetensors");
  const std::string message = read_error(missing);
  EXPECT_TRUE(has(message, missing) && has(message, "No such file")) << message;
}

TEST_F(SafeTensorsTest, MissingTensorNamesFileAndNearbyNames) {
  const std::string file = path("names.safetensors");
  std::vector<float> v(1, 0.0f);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const char* name :
       {"model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.up_proj.weight",
        "model.norm.weight", "lm_head.weight"}) {
    tensors.emplace_back(name, Tensor(v.data(), DType::F32, {1}));
  }
  write_safetensors(file, tensors);
  SafeTensorsReader reader(file);
  try {
    reader.get("model.layers.0.mlp.gate_proj.weight");
    FAIL() << "no error for a missing tensor";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_TRUE(has(message, file)) << message;
    EXPECT_TRUE(has(message, "no tensor 'model.layers.0.mlp.gate_proj.weight'")) << message;
    EXPECT_TRUE(has(message, "'model.layers.0.mlp.down_proj.weight'")) << message;
  }
}

TEST_F(SafeTensorsTest, WriterErrorsNameThePath) {
  std::vector<float> v(2, 1.0f);
  const Tensor t(v.data(), DType::F32, {2});
  const std::string unwritable = path("no/such/dir/x.safetensors");
  try {
    write_safetensors(unwritable, {{"a", t}});
    FAIL() << "no error writing into a missing directory";
  } catch (const Error& e) {
    EXPECT_TRUE(has(e.what(), unwritable) && has(e.what(), "No such file")) << e.what();
  }
  const std::string file = path("dup.safetensors");
  try {
    write_safetensors(file, {{"a", t}, {"a", t}});
    FAIL() << "no error for a duplicate name";
  } catch (const Error& e) {
    EXPECT_TRUE(has(e.what(), file) && has(e.what(), "appears twice")) << e.what();
  }
  EXPECT_FALSE(fs::exists(file));
  EXPECT_THROW(write_safetensors(file, {{"__metadata__", t}}), Error);
  EXPECT_THROW(write_safetensors(file, {{"a", Tensor(nullptr, DType::F32, {2})}}), Error);
}

// The goldens are written by Python (json + struct), so reading them checks keel against an
// independent writer of the format. Decoding is checked through the numbers: the loss stored by
// PyTorch must equal the mean cross-entropy recomputed here from the stored logits and targets.
TEST(SafeTensorsGolden, ReadsThePythonWrittenGoldens) {
  struct Golden {
    const char* name;
    int64_t V, C, I, B, T, ignored;
    bool tied;
  };
  for (const Golden& g : {Golden{"gqa_untied", 67, 48, 88, 3, 13, 3, false},
                          Golden{"mqa_tied", 53, 30, 50, 2, 11, 0, true}}) {
    SCOPED_TRACE(g.name);
    const std::string file =
        std::string(KEEL_SOURCE_DIR) + "/tests/reference/golden/" + g.name + ".safetensors";
    SafeTensorsReader reader(file);
    const auto& meta = reader.metadata();
    EXPECT_EQ(meta.at("vocab_size"), std::to_string(g.V));
    EXPECT_EQ(meta.at("hidden_size"), std::to_string(g.C));
    EXPECT_EQ(meta.at("tie_word_embeddings"), g.tied ? "true" : "false");
    EXPECT_EQ(std::stod(meta.at("learning_rate")), 1e-2);
    // 2 inputs, P initial weights, logits, loss, P gradients, 3 × 3 step scalars, P finals.
    const int64_t P = 1 + 2 * 9 + 1 + (g.tied ? 0 : 1);
    EXPECT_EQ(static_cast<int64_t>(reader.names().size()), 2 + P + 2 + P + 9 + P);
    EXPECT_EQ(reader.contains("lm_head.weight"), !g.tied);

    const Tensor w = reader.get("model.layers.1.mlp.down_proj.weight");
    EXPECT_EQ(w.dtype(), DType::F32);
    EXPECT_EQ(w.shape(), (Shape{g.C, g.I}));
    EXPECT_EQ(reader.get("final.model.layers.1.mlp.down_proj.weight").dtype(), DType::F64);

    const Tensor ids = reader.get("input_ids"), targets = reader.get("targets");
    const Tensor logits = reader.get("logits"), loss = reader.get("loss");
    ASSERT_EQ(ids.dtype(), DType::I32);
    ASSERT_EQ(targets.dtype(), DType::I32);
    ASSERT_EQ(logits.dtype(), DType::F64);
    ASSERT_EQ(loss.dtype(), DType::F64);
    EXPECT_EQ(ids.shape(), (Shape{g.B, g.T}));
    ASSERT_EQ(targets.shape(), (Shape{g.B, g.T}));
    ASSERT_EQ(logits.shape(), (Shape{g.B, g.T, g.V}));
    ASSERT_EQ(loss.shape(), (Shape{1}));
    for (int64_t i = 0; i < ids.numel(); ++i) {
      EXPECT_TRUE(ids.data_as<int32_t>()[i] >= 0 && ids.data_as<int32_t>()[i] < g.V);
    }

    double sum = 0.0;
    int64_t counted = 0, ignored = 0;
    for (int64_t n = 0; n < g.B * g.T; ++n) {
      const int32_t target = targets.data_as<int32_t>()[n];
      if (target == -100) {
        ++ignored;
        continue;
      }
      const double* row = logits.data_as<double>() + n * g.V;
      double top = row[0];
      for (int64_t v = 1; v < g.V; ++v) top = std::max(top, row[v]);
      double z = 0.0;
      for (int64_t v = 0; v < g.V; ++v) z += std::exp(row[v] - top);
      sum += top + std::log(z) - row[target];
      ++counted;
    }
    EXPECT_EQ(ignored, g.ignored);
    const double want = loss.data_as<double>()[0];
    EXPECT_NEAR(sum / static_cast<double>(counted), want, 1e-12 * want);
    EXPECT_EQ(reader.get("step1.loss").data_as<double>()[0], want);
  }
}

}  // namespace
}  // namespace keel::runtime
