// The subcommands of the `micache` program.
#pragma once

#include <cstddef>
#include <optional>
#include <string>

#include "micache/device.hpp"

namespace micache::cli {

struct DemoOptions {
  Device device;
  std::string data;                      ///< fixture folder; empty: found as data_dir says
  std::string sentence = "s0";           ///< s0, s1 or s2
  std::optional<std::size_t> query;      ///< query position; default: the last token
  std::string heatmap;                   ///< .svg (labelled) or PNG path; empty: none
  std::optional<std::size_t> heatmap_layer;  ///< default: the last layer
};

/// `micache demo`: attention, KV-cache and compressed-cache views of the bundled MiniLM data.
int run_demo(const DemoOptions& options);

/// `micache bench`: the core operations timed at a realistic size on `device`, with progress.
int run_bench(Device device, bool quick);

/// `micache info`: version, build, backends and devices.
int run_info();

}  // namespace micache::cli
