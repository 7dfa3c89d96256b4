// The `micache` command-line program.
//   micache [demo] [--device D] [--data DIR] [--sentence s0|s1|s2] [--query N] [--heatmap FILE.png|FILE.svg] [--layer L]
//   micache info
//   micache bench [--device D] [--quick]
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "commands.hpp"
#include "micache/micache.hpp"

namespace micache::cli {
namespace {

int usage() {
  std::fprintf(stderr,
               "usage: micache [demo] [--device cpu|cuda|cuda:N] [--data DIR] [--sentence s0|s1|s2] [--query N]\n"
               "                      [--heatmap FILE.png|FILE.svg] [--layer L]\n"
               "       micache info\n"
               "       micache bench [--device cpu|cuda|cuda:N] [--quick]\n"
               "demo (the default) prints what sentence-transformers/all-MiniLM-L6-v2 attends to on a bundled\n"
               "sentence, fills a KV cache under a memory budget and measures the compressed cache on the\n"
               "model's real keys; --heatmap also draws one layer's head-mean pattern (an SVG with token\n"
               "labels and a colour scale, or a bare PNG grid).\n");
  return 2;
}

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::cpu();
  if (name == "cuda") return Device::cuda(0);
  if (name.rfind("cuda:", 0) == 0) return Device::cuda(std::stoi(name.substr(5)));
  throw Error(ErrorCode::Config, "unknown device '" + name + "' (cpu, cuda or cuda:N)");
}

std::size_t parse_count(const std::string& flag, const std::string& text) {
  std::size_t used = 0;
  const unsigned long value = std::stoul(text, &used);
  if (used != text.size()) throw Error(ErrorCode::Config, flag + " needs a number, got '" + text + "'");
  return value;
}

}  // namespace

int run_info() {
  std::printf("micache %s\n", MICACHE_VERSION_STRING);
  std::printf("CUDA backend built: %s", cuda_built() ? "yes" : "no");
#ifdef MICACHE_CLI_CUDA_ARCHITECTURES
  if (cuda_built()) std::printf(" (kernels for sm_%s)", MICACHE_CLI_CUDA_ARCHITECTURES);
#endif
  const std::string reason = cuda_unavailable_reason();
  std::printf("\nCUDA usable: %s\n", reason.empty() ? "yes" : ("no (" + reason + ")").c_str());
  std::printf("devices:\n");
  for (const Device& d : available_devices()) {
    Backend& backend = backend_for(d);
    std::printf("  %-7s %s backend: %s\n", d.to_string().c_str(), backend.name(), backend.description().c_str());
  }
  std::printf("best device: %s\n", Device::best().to_string().c_str());
  return 0;
}

}  // namespace micache::cli

int main(int argc, char** argv) {
  using namespace micache;
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string command = "demo";
  if (!args.empty() && args.front().rfind("--", 0) != 0) {
    command = args.front();
    args.erase(args.begin());
  }
  try {
    cli::DemoOptions demo;
    demo.device = Device::best();
    bool quick = false;
    for (std::size_t i = 0; i < args.size(); ++i) {
      const std::string& flag = args[i];
      if (flag == "--quick") {
        quick = true;
        continue;
      }
      if (i + 1 == args.size()) return cli::usage();
      const std::string& value = args[++i];
      if (flag == "--device") {
        demo.device = cli::parse_device(value);
      } else if (flag == "--data") {
        demo.data = value;
      } else if (flag == "--sentence") {
        demo.sentence = value;
      } else if (flag == "--query") {
        demo.query = cli::parse_count(flag, value);
      } else if (flag == "--heatmap") {
        demo.heatmap = value;
      } else if (flag == "--layer") {
        demo.heatmap_layer = cli::parse_count(flag, value);
      } else {
        return cli::usage();
      }
    }
    if (command == "demo") return cli::run_demo(demo);
    if (command == "info") return cli::run_info();
    if (command == "bench") return cli::run_bench(demo.device, quick);
    return cli::usage();
  } catch (const Error& e) {
    std::fprintf(stderr, "micache: %s error: %s\n", to_string(e.code()), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "micache: %s\n", e.what());
    return 1;
  }
}
