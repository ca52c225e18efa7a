// The picture of a run's loss: training loss, and validation loss where it was logged, per step,
// read from the run's metrics.jsonl and drawn as one self-contained SVG (no scripts, no fonts to
// fetch) that a browser or an image viewer opens at the end of a run.
#pragma once

#include <string>

namespace keel::runtime {

// Reads metrics_jsonl, one JSON object per line with an integer "step" and a "loss", an
// "eval_loss" or both (other keys are ignored, blank lines skipped; printf's nan and inf, which
// metrics.jsonl holds for a diverged step, are read as non-finite), and writes the chart to
// svg_path with write_text_durably. Non-finite losses are left out and counted in a note on the
// chart. A file without a finite loss is not an error (a run can stop before its first logging
// step): the SVG then says "no loss logged". A missing file, or a line that is not such an object,
// is an error naming the file and the line.
void write_loss_curve_svg(const std::string& metrics_jsonl, const std::string& svg_path);

}  // namespace keel::runtime
