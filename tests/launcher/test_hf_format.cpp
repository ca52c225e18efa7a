// keel export --format hf and keel import: a trained run's checkpoint exported, imported into a
// new run and exported again gives the same files; the imported run trains; mistakes are one
// clear line each.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>

#include "cli_util.h"

namespace keel::test {
namespace {

std::string file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

TEST_F(Cli, ExportImportExportGivesTheSameFiles) {
  const std::string prep = (dir_ / "prep").string(), hf = (dir_ / "hf").string(),
                    imported = (dir_ / "imported").string(), again = (dir_ / "again").string();
  ASSERT_EQ(run("prepare data/kjv.txt.gz --vocab-size 300 --out " + prep).code, 0);
  const std::string cfg = write("c.yaml", std::string(kParallelModel));
  Result r =
      run("train " + cfg + " --set data.train=" + prep +
          " --set model.vocab_size=300 --set training.max_steps=4 --set training.save_steps=4"
          " --set training.output_dir=" +
          out_dir());
  ASSERT_EQ(r.code, 0) << r.out;

  r = run("export " + out_dir() + " " + hf);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("keel export needs --format hf"), std::string::npos) << r.out;
  r = run("export --format hf " + out_dir() + " " + hf);
  ASSERT_EQ(r.code, 0) << r.out;
  // The checkpoint at the last step holds the run's final weights.
  {
    const runtime::SafeTensorsReader a(out_dir() + "/model.safetensors"),
        b(hf + "/model.safetensors");
    ASSERT_EQ(a.names(), b.names());
    for (const std::string& n : a.names()) {
      const Tensor x = a.get(n), y = b.get(n);
      ASSERT_EQ(x.shape(), y.shape()) << n;
      EXPECT_EQ(0, std::memcmp(x.data(), y.data(), x.nbytes())) << n;
    }
  }

  r = run("import " + hf + " --out " + imported);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("give the data to train on with --set data.train=PATH"), std::string::npos)
      << r.out;
  EXPECT_FALSE(fs::exists(imported)) << "a refused import must write nothing";
  r = run("import " + hf + " --out " + imported + " --set data.train=" + prep +
          " --set data.seq_length=48 --set training.max_steps=2");
  ASSERT_EQ(r.code, 0) << r.out;
  r = run("export --format hf " + imported + " " + again);
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* f :
       {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"})
    EXPECT_EQ(file_bytes(hf + "/" + f), file_bytes(again + "/" + f)) << f;

  r = run("train " + imported + "/config.yaml");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("resumed from " + imported + "/checkpoints/step_00000000 at step 0"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(losses(imported + "/metrics.jsonl").size(), 2u);

  // Not a LLaMA: a clear error naming the file and the field.
  std::string config = file_bytes(hf + "/config.json");
  config.replace(config.find("\"llama\""), 7, "\"mistral\"");
  std::ofstream(hf + "/config.json") << config;
  r = run("import " + hf + " --out " + (dir_ / "x").string() + " --set data.train=" + prep);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("config.json: model_type is 'mistral'"), std::string::npos) << r.out;
}

// Neither command writes over what is there unless told to: an import into a run directory
// would replace its config and move its latest checkpoint to step 0.
TEST_F(Cli, ImportAndExportRefuseToOverwrite) {
  const std::string cfg = write("c.yaml", kParallelModel);
  const std::string hf = (dir_ / "hf").string(), run_dir = out_dir();
  Result r = train(1, cfg,
                   " --set training.max_steps=2 --set training.save_steps=2"
                   " --set training.output_dir=" +
                       run_dir);
  ASSERT_EQ(r.code, 0) << r.out;
  ASSERT_EQ(run("export --format hf " + run_dir + " " + hf).code, 0);
  const std::string weights = file_bytes(hf + "/model.safetensors");
  std::ofstream(hf + "/model.safetensors") << "stale";
  r = run("export --format hf " + run_dir + " " + hf);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find(hf + " is not empty (it holds config.json, generation_config.json, "
                            "model.safetensors, special_tokens_map.json, ... (6 entries)); "
                            "export into a new or empty directory, or add --force"),
            std::string::npos)
      << r.out;
  EXPECT_TRUE(file_bytes(hf + "/model.safetensors") == "stale");
  r = run("export --format hf " + run_dir + " " + hf + " --force");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(file_bytes(hf + "/model.safetensors") == weights);

  const std::string config = file_bytes(run_dir + "/config.yaml");
  const std::string data = " --set data.train=data/kjv.txt.gz --set data.seq_length=48";
  r = run("import " + hf + " --out " + run_dir + data);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("--out " + run_dir +
                       " is a run directory (it holds checkpoints/, "
                       "config.yaml, logs/, loss.svg, ... ("),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("; latest checkpoint: step_00000002); importing would replace its "
                       "config.yaml and make step 0 its latest checkpoint; give a new or empty "
                       "--out, or add --force to import over it"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(file_bytes(run_dir + "/config.yaml"), config);
  EXPECT_EQ(file_bytes(run_dir + "/checkpoints/latest").rfind("step_00000002", 0), 0u);
  EXPECT_FALSE(fs::exists(run_dir + "/.keel.lock"));

  const std::string other = (dir_ / "other").string();
  fs::create_directories(other);
  std::ofstream(other + "/notes.txt") << "mine\n";
  r = run("import " + hf + " --out " + other + data);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("--out " + other +
                       " is not empty (it holds notes.txt); give a new or "
                       "empty --out, or add --force to import into it"),
            std::string::npos)
      << r.out;

  r = run("import " + hf + " --out " + run_dir + data + " --force");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(file_bytes(run_dir + "/checkpoints/latest").rfind("step_00000000", 0), 0u);
}

// A model with experts goes out as Hugging Face's Mixtral (every expert's w1/w3/w2 under
// block_sparse_moe) and comes back as the same model: exported again, the same files; keel eval
// and keel generate run it, and the import decodes as the original does. What Mixtral cannot hold
// is refused before anything is written.
TEST_F(Cli, ModelWithExpertsGoesOutAndComesBackAsMixtral) {
  const std::string prep = (dir_ / "prep").string(), hf = (dir_ / "hf").string(),
                    imported = (dir_ / "imported").string(), again = (dir_ / "again").string();
  ASSERT_EQ(run("prepare data/kjv.txt.gz --vocab-size 300 --out " + prep).code, 0);
  const std::string cfg = write("c.yaml", std::string(kParallelModel));
  const std::string experts =
      " --set data.train=" + prep +
      " --set model.vocab_size=300 --set model.num_local_experts=4"
      " --set model.num_experts_per_tok=2 --set model.output_router_logits=true";
  Result r = train(1, cfg,
                   experts + " --set training.max_steps=4 --set training.save_steps=4" +
                       " --set training.output_dir=" + out_dir());
  ASSERT_EQ(r.code, 0) << r.out;

  r = run("eval " + out_dir() + " --max-samples 4");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("over 4 sequences"), std::string::npos) << r.out;
  const std::string greedy = " --prompt 'And God said' --max-new-tokens 12 --temperature 0";
  const Result decoded = run("generate " + out_dir() + greedy);
  ASSERT_EQ(decoded.code, 0) << decoded.out;
  EXPECT_NE(decoded.out.find("12 tokens in"), std::string::npos) << decoded.out;

  r = run("export --format hf " + out_dir() + " " + hf);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("as a Hugging Face Mixtral"), std::string::npos) << r.out;
  const std::string config = file_bytes(hf + "/config.json");
  for (const char* key :
       {"\"architectures\": [\n    \"MixtralForCausalLM\"\n  ]", "\"model_type\": \"mixtral\"",
        "\"num_local_experts\": 4", "\"num_experts_per_tok\": 2", "\"output_router_logits\": true",
        "\"router_aux_loss_coef\": 0.001", "\"router_jitter_noise\": 0.0",
        "\"sliding_window\": null"})
    EXPECT_NE(config.find(key), std::string::npos) << key << " in " << config;
  {
    const runtime::SafeTensorsReader file(hf + "/model.safetensors");
    const std::vector<std::string> names = file.names();
    const std::string e3 = "model.layers.1.block_sparse_moe.experts.3.";
    for (const std::string& n : {e3 + "w1.weight", e3 + "w3.weight", e3 + "w2.weight",
                                 std::string("model.layers.0.block_sparse_moe.gate.weight")})
      EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
    EXPECT_EQ(file.get(e3 + "w2.weight").shape(), (Shape{64, 96}));
    EXPECT_EQ(file.get("model.layers.0.block_sparse_moe.gate.weight").shape(), (Shape{4, 64}));
    for (const std::string& n : names) EXPECT_EQ(n.find(".mlp."), std::string::npos) << n;
  }

  r = run("import " + hf + " --out " + imported + " --set data.train=" + prep +
          " --set data.seq_length=48 --set training.max_steps=1");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(file_bytes(imported + "/config.yaml").find("num_local_experts: 4"), std::string::npos);
  r = run("export --format hf " + imported + " " + again);
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* f : {"model.safetensors", "config.json", "tokenizer.json"})
    EXPECT_EQ(file_bytes(hf + "/" + f), file_bytes(again + "/" + f)) << f;
  // The imported model continues the prompt as the trained one does.
  r = run("generate " + imported + greedy);
  ASSERT_EQ(r.code, 0) << r.out;
  auto continuation = [](const std::string& out) {
    const size_t at = out.find("And God said");
    return at == std::string::npos ? out : out.substr(at, out.find('\n', at) - at);
  };
  EXPECT_EQ(continuation(r.out), continuation(decoded.out));
  EXPECT_GT(continuation(decoded.out).size(), std::string("And God said").size());

  // Another family's experts: one line naming it.
  std::string other = config;
  other.replace(other.find("\"mixtral\""), 9, "\"qwen2_moe\"");
  std::ofstream(hf + "/config.json") << other;
  r = run("import " + hf + " --out " + (dir_ / "x").string() + " --set data.train=" + prep);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("config.json: model_type is 'qwen2_moe', a mixture of experts other than "
                       "Mixtral ('num_local_experts' is set); keel imports LLaMA ('llama') and "
                       "Mixtral ('mixtral') models"),
            std::string::npos)
      << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "x"));

  // Dense layers between the MoE ones: Mixtral has none, so the export is refused, writing
  // nothing.
  const std::string sparse = (dir_ / "sparse").string(), refused = (dir_ / "refused").string();
  r = train(1, cfg,
            experts + " --set model.moe_layer_freq=2 --set training.max_steps=1" +
                " --set training.save_steps=1 --set training.output_dir=" + sparse);
  ASSERT_EQ(r.code, 0) << r.out;
  r = run("export --format hf " + sparse + " " + refused);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("model.moe_layer_freq is 2, so layers 1 are dense, and Hugging Face's "
                       "Mixtral"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  EXPECT_FALSE(fs::exists(refused));

  // Trained with capacity: exported, with a note that transformers decodes dropless.
  const std::string capped = (dir_ / "capped").string();
  r = train(1, cfg,
            experts + " --set model.moe_token_dropping=true --set training.max_steps=1" +
                " --set training.save_steps=1 --set training.output_dir=" + capped);
  ASSERT_EQ(r.code, 0) << r.out;
  r = run("export --format hf " + capped + " " + (dir_ / "capped_hf").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("keel: note: the model was trained with model.moe_token_dropping "
                       "(capacity factor 1); transformers' Mixtral routes every token to its "
                       "experts (dropless)"),
            std::string::npos)
      << r.out;
}

}  // namespace
}  // namespace keel::test
