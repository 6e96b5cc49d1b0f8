#pragma once
// SVG charts of a spec's tables, drawn by gnuplot (a child process): one chart per table and
// metric, one bar per configuration; failed configurations are marked with their verdict, and
// memory charts draw the device limit, so the out-of-memory frontier shows. Per-step curves of
// fine-tuning (the `steps` table): loss and memory against the step, one line per configuration.
#include <string>
#include <vector>

#include "harness/report/report.h"
#include "harness/store/store.h"

namespace hx {

struct PlotOptions {
  std::string out_dir = "reports";
  std::string gnuplot = "gnuplot";  // looked up in PATH
  double limit_mb = 0;              // memory line; 0: from the spec's memory_limit_mb / the GPU
};

// Writes <out>/<spec>-<table>-<metric>.{dat,gp,svg} and returns the SVG paths.
std::vector<std::string> plot_report(const Spec& spec, const std::vector<ReportTable>& tables,
                                     const PlotOptions& options);

// One run's steps, drawn as one line.
struct StepCurve {
  int part = 0;       // index into Spec::parts
  std::string label;  // the configuration: "gc=on, lora=off" (+ " (oom)" when not ok)
  std::vector<StepRow> steps;
};

// The curves of a plan's stored runs: per configuration, its lowest repeat with steps that carry
// a loss or a memory figure (fine-tuning; generation's decode steps have neither). The label
// names the axes of the run's part that take more than one value. In plan order.
std::vector<StepCurve> step_curves(const Spec& spec, const std::vector<RunConfig>& plan,
                                   const std::vector<StoredRun>& runs, const Store& store);

// Per part with curves: <out>/<spec>-steps[-<part>]-loss.svg (loss of each step) and -mem.svg
// (each step's peak memory, with the limit line), with their .dat and .gp. Returns the SVG paths.
std::vector<std::string> plot_steps(const Spec& spec, const std::vector<StepCurve>& curves,
                                    const PlotOptions& options);

}  // namespace hx
