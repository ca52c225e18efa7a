#include "launcher/inference_commands.h"

#include <algorithm>
#include <chrono>
#include <iostream>
#include <span>

#include "kernels/error.h"
#include "launcher/command_line.h"
#include "parallel/self_communicator.h"
#include "runtime/model/generate.h"
#include "runtime/store/saved_model.h"
#include "runtime/train/evaluate.h"

namespace keel::launcher {

namespace {

constexpr const char* kGenerateUsage =
    R"(usage: keel generate CKPT --prompt TEXT [options]

Continues TEXT with the model of a checkpoint (a checkpoint directory, a run's checkpoints/ or
the run directory: its latest checkpoint, else the model.safetensors it wrote at its end), printing the tokens as they come. Decoding keeps a key/value
cache, so each new token costs one pass over the weights. The prompt starts with the tokenizer's
BOS token; generation stops at its EOS token, after --max-new-tokens, or at the model's
max_position_embeddings.

options:
  --prompt TEXT           the text to continue (required)
  --max-new-tokens N      tokens to generate at most (default 64)
  --temperature T         divide the logits by T before sampling; 0 is greedy (default 1.0)
  --top-k K               sample among the K most likely tokens; 0 keeps all (default 0)
  --top-p P               sample among the most likely tokens whose mass reaches P (default 1.0)
  --seed S                seed of the sampler: the same seed gives the same text (default 0)
  --num-samples N         continuations to print, one after another (default 1)
  --tokenizer PATH        a tokenizer.json (default: the run's own, <run>/tokenizer.json)
  -h, --help              show this help
)";

constexpr const char* kEvalUsage =
    R"(usage: keel eval CKPT [--data PATH] [--max-samples N] [--batch-size N]

Prints the validation loss and perplexity of a checkpoint's model (a checkpoint directory, a
run's checkpoints/ or the run directory: its latest checkpoint, else its model.safetensors): the mean cross-entropy over every
validation sequence of data.seq_length tokens, in order.

options:
  --data PATH         held-out data: a prepared directory (its val_*.tokens), a .tokens shard or
                      a text file (default: the run's data.validation, see docs/CONFIG.md)
  --max-samples N     evaluate the first N sequences only (default: the run's
                      data.max_eval_samples; 0 is all)
  --batch-size N      sequences per forward pass (default: per_device_train_batch_size)
  --tokenizer PATH    a tokenizer.json (default: the run's own, <run>/tokenizer.json)
  -h, --help          show this help
)";

// Bytes of text that end inside a UTF-8 character (a byte-level token may end anywhere in one):
// how many trailing bytes to hold back until the character's other bytes arrive.
size_t incomplete_utf8_tail(const std::string& s) {
  for (size_t back = 1; back <= std::min<size_t>(3, s.size()); ++back) {
    const auto c = static_cast<unsigned char>(s[s.size() - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back
    const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return need > back ? back : 0;
  }
  return 0;
}

// A model over B sequences of T positions that holds only the checkpoint's weights.
std::unique_ptr<runtime::LlamaModel> load_model(const runtime::SavedModel& saved, int64_t B,
                                                int64_t T) {
  auto model = std::make_unique<runtime::LlamaModel>(saved.config.model, B, T, false,
                                                     runtime::ModelHolds{true, false, true});
  runtime::load_parameters(saved, *model);
  return model;
}

}  // namespace

int run_generate(const std::vector<std::string>& args) {
  const CommandLine cl(args, "generate",
                       {"--prompt", "--max-new-tokens", "--temperature", "--top-k", "--top-p",
                        "--seed", "--num-samples", "--tokenizer"});
  if (cl.help()) {
    std::cout << kGenerateUsage;
    return 0;
  }
  KEEL_CHECK(cl.positional().size() == 1 && cl.has("--prompt"),
             "usage: keel generate CKPT --prompt TEXT (keel generate --help)");
  runtime::SamplingOptions sampling;
  sampling.temperature = cl.number("--temperature", sampling.temperature);
  sampling.top_k = cl.whole("--top-k", 0);
  sampling.top_p = cl.number("--top-p", sampling.top_p);
  const int64_t max_new = cl.whole("--max-new-tokens", 64, 1);
  const int64_t samples = cl.whole("--num-samples", 1, 1);
  runtime::Sampler sampler(sampling, static_cast<uint64_t>(cl.whole("--seed", 0)));

  const runtime::SavedModel saved =
      runtime::open_saved_model(cl.positional()[0], cl.text("--tokenizer"));
  const runtime::Tokenizer& tokenizer = saved.tokenizer;
  std::vector<int32_t> prompt;
  if (tokenizer.bos_id() >= 0) prompt.push_back(tokenizer.bos_id());
  tokenizer.encode(cl.text("--prompt"), prompt);
  KEEL_CHECK(!prompt.empty(),
             "the prompt is empty and the tokenizer has no BOS token to start from");
  const int64_t limit = saved.config.model.max_position_embeddings;
  KEEL_CHECK(static_cast<int64_t>(prompt.size()) < limit,
             "the prompt has {} tokens, and the model sees at most max_position_embeddings = {}",
             prompt.size(), limit);
  const auto model = load_model(saved, 1, 1);
  runtime::Generator generator(*model,
                               std::min(limit, static_cast<int64_t>(prompt.size()) + max_new));
  std::cerr << "keel: " << saved.what << ", " << model->num_parameters() / 1e6
            << " M parameters; prompt of " << prompt.size() << " tokens\n";

  for (int64_t i = 0; i < samples; ++i) {
    if (samples > 1) std::cout << (i ? "\n" : "") << "--- sample " << i + 1 << " ---\n";
    std::cout << cl.text("--prompt") << std::flush;
    generator.reset();
    const auto t0 = std::chrono::steady_clock::now();
    std::string pending;  // decoded bytes not printed yet: the start of a UTF-8 character
    const std::vector<int32_t> out =
        runtime::generate(generator, sampler, prompt, max_new, tokenizer.eos_id(), [&](int32_t t) {
          // Ids past the tokenizer's (a model vocabulary padded beyond it) have no text.
          if (t >= tokenizer.vocab_size() || tokenizer.is_special(t)) return;
          pending += tokenizer.decode(std::span<const int32_t>(&t, 1));
          const size_t ready = pending.size() - incomplete_utf8_tail(pending);
          std::cout << pending.substr(0, ready) << std::flush;
          pending.erase(0, ready);
        });
    std::cout << pending;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::cout << "\n";
    std::cerr << "keel: " << out.size() << " tokens in " << s << " s ("
              << static_cast<double>(out.size()) / s << " tokens/s)\n";
  }
  return 0;
}

int run_eval(const std::vector<std::string>& args) {
  const CommandLine cl(args, "eval", {"--data", "--max-samples", "--batch-size", "--tokenizer"});
  if (cl.help()) {
    std::cout << kEvalUsage;
    return 0;
  }
  KEEL_CHECK(cl.positional().size() == 1, "usage: keel eval CKPT [--data PATH] (keel eval --help)");
  const runtime::SavedModel saved =
      runtime::open_saved_model(cl.positional()[0], cl.text("--tokenizer"));
  runtime::DataConfig data = saved.config.data;
  if (cl.has("--data")) {
    data.validation = cl.text("--data");
  } else if (data.validation != "none") {
    // data.validation auto reads the validation split that keel prepare wrote beside data.train.
    const std::string key = data.validation == "auto" ? "data.train" : "data.validation";
    const auto missing = saved.not_found.find(key);
    KEEL_CHECK(missing == saved.not_found.end(),
               "cannot find the run's {} {}; give the validation data with --data PATH", key,
               missing->second);
  }
  const auto val = runtime::open_validation(data, saved.tokenizer, saved.config.model.vocab_size);
  KEEL_CHECK(val,
             "the run of {} has no validation data (data.validation is '{}'); give some with "
             "--data PATH",
             saved.what, data.validation);
  if (!val->note().empty()) std::cerr << "keel: note: " << val->note() << "\n";
  const int64_t B = cl.whole("--batch-size", saved.config.training.per_device_train_batch_size, 1);
  const int64_t T = data.seq_length;
  const auto model = load_model(saved, B, T);
  std::vector<int32_t> tokens(static_cast<size_t>(B * T)), targets(tokens.size());
  parallel::SelfCommunicator one;
  const auto t0 = std::chrono::steady_clock::now();
  const runtime::EvalResult r =
      runtime::evaluate(*model, *val, cl.whole("--max-samples", data.max_eval_samples), one,
                        tokens.data(), targets.data());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "keel: eval of " << saved.what << ": loss " << r.loss << ", perplexity "
            << r.perplexity() << " over " << r.sequences << " sequences (" << r.tokens
            << " tokens) in " << s << " s\n";
  return 0;
}

}  // namespace keel::launcher
