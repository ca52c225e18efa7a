// Every file in configs/ loads and validates, and builds its model (the memory plan is made, so
// the shapes are consistent end to end). tiny.yaml, demo.yaml, pipeline.yaml and moe.yaml are also
// trained by tests/launcher.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "runtime/config/config.h"
#include "runtime/model/llama.h"

namespace keel::runtime {
namespace {

TEST(ShippedConfigs, AllLoadAndBuild) {
  int count = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator(std::string(KEEL_SOURCE_DIR) + "/configs")) {
    if (entry.path().extension() != ".yaml") continue;
    SCOPED_TRACE(entry.path().string());
    const Config c = load_config(entry.path().string());
    // The data is bundled, or the config's header gives the keel prepare command that makes it.
    std::ifstream f(entry.path());
    const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    EXPECT_TRUE(std::filesystem::exists(std::string(KEEL_SOURCE_DIR) + "/" + c.data.train) ||
                (text.find("keel prepare data/") != std::string::npos &&
                 text.find("--out " + c.data.train + "\n") != std::string::npos))
        << c.data.train;
    // One sequence is enough to check the shapes fit together without a large allocation.
    LlamaModel model(c.model, 1, c.data.seq_length, c.training.gradient_checkpointing);
    EXPECT_GT(model.num_parameters(), 0);
    ++count;
  }
  EXPECT_GE(count, 2);
}

}  // namespace
}  // namespace keel::runtime
