// GaLore's settings (optimizer.galore in the run config; optim/galore.h applies them), in a header
// of their own so the run config can hold them without the optimizers.
#pragma once

#include <cstdint>
#include <string>

namespace keel::optim {

struct GaloreConfig {
  int64_t rank = 0;                  // of the projected gradient; 0 leaves GaLore off
  int64_t update_proj_gap = 200;     // steps between projector refreshes
  double scale = 0.25;               // α: the projected-back update is multiplied by it
  std::string proj_type = "std";     // std | reverse_std | left | right
  std::string projector = "exact";   // exact (Gram eigenvectors) | randomized (range sketch)
  std::string targets = "attn,mlp";  // matrices whose names contain one of these, comma-separated
  int64_t oversample = 8;            // randomized: sketch vectors beyond rank
  int64_t power_iterations = 2;      // randomized: passes of the sketch through the Gram matrix
};

}  // namespace keel::optim
