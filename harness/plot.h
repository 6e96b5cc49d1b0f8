#pragma once
// SVG charts of a spec's tables, drawn by gnuplot (a child process): one chart per table and
// metric, one bar per configuration; failed configurations are marked with their verdict, and
// memory charts draw the device limit, so the out-of-memory frontier shows.
#include <string>
#include <vector>

#include "harness/report.h"

namespace hx {

struct PlotOptions {
  std::string out_dir = "reports";
  std::string gnuplot = "gnuplot";  // looked up in PATH
  double limit_mb = 0;              // memory line; 0: from the spec's memory_limit_mb / the GPU
};

// Writes <out>/<spec>-<table>-<metric>.{dat,gp,svg} and returns the SVG paths.
std::vector<std::string> plot_report(const Spec& spec, const std::vector<ReportTable>& tables,
                                     const PlotOptions& options);

}  // namespace hx
