// `micache demo`: what an interpretability user looks at, on real data: the
// attention of sentence-transformers/all-MiniLM-L6-v2 over a bundled sentence,
// a KV cache filled token by token under a memory budget, and the compressed
// cache's size and accuracy on the model's real keys.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

#include "commands.hpp"
#include "micache/micache.hpp"
#include "minilm_data.hpp"
#include "png_heatmap.hpp"
#include "svg_heatmap.hpp"

namespace micache::cli {
namespace {

constexpr std::size_t kHeads = 12;
constexpr std::size_t kHeadDim = 32;

std::string kib(std::size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f KiB", static_cast<double>(bytes) / 1024.0);
  return text;
}

// A bar of up to 20 characters for a weight in [0, 1], padded to 20 when `pad`.
std::string bar(float weight, bool pad = false) {
  const auto n = static_cast<std::size_t>(std::lround(std::clamp(weight, 0.0f, 1.0f) * 20.0f));
  return std::string(n, '#') + std::string(pad ? 20 - n : 0, ' ');
}

class Demo {
 public:
  Demo(const DemoOptions& options, Sentence sentence, Sentence passage)
      : options_(options), s_(std::move(sentence)), passage_(std::move(passage)) {}

  void attention() {
    const AttentionCache cache = AttentionCache::load(s_.path, options_.device);
    const std::size_t seq = s_.tokens.size();
    const std::size_t query = options_.query.value_or(seq - 1);
    if (query >= seq) throw Error(ErrorCode::Hook, "query " + std::to_string(query) + " out of range (seq=" +
                                                       std::to_string(seq) + ")");
    std::printf("\n1. Where %s attends: top-5 keys of the head mean over %zu heads, per layer\n",
                token(query).c_str(), kHeads);
    std::printf("   (%zu layers x %s %s loaded with AttentionCache::load)\n", cache.n_layers(),
                cache.get_layer(0)->shape().to_string().c_str(), dtype_name(cache.get_layer(0)->dtype()));
    for (std::size_t layer = 0; layer < cache.n_layers(); ++layer) {
      std::printf("   layer %zu:", layer);
      for (const auto& [key, weight] : cache.top_attended_positions(layer, query, 5)) {
        std::printf("  %-14s %.3f", token(key).c_str(), static_cast<double>(weight));
      }
      std::printf("\n");
    }

    std::printf("\n2. Attention paid to the first token %s, per layer (head mean)\n", token(0).c_str());
    std::printf("   %-7s  %-26s  %s\n", "", "from the query token", "mean over every query");
    for (std::size_t layer = 0; layer < cache.n_layers(); ++layer) {
      const std::vector<float> column = cache.attention_to_position(layer, 0);
      const float mean = std::accumulate(column.begin(), column.end(), 0.0f) / static_cast<float>(column.size());
      std::printf("   layer %zu  %.3f %s  %.3f %s\n", layer, static_cast<double>(column[query]),
                  bar(column[query], true).c_str(), static_cast<double>(mean), bar(mean).c_str());
    }

    std::printf("\n3. Previous-token heads: per layer, the head that puts most weight on the token before\n");
    for (std::size_t layer = 0; layer < cache.n_layers(); ++layer) {
      std::size_t best_head = 0;
      double best = -1.0;
      for (std::size_t head = 0; head < kHeads; ++head) {
        const std::vector<float> p = cache.head_mean(layer, {.batch = 0, .heads = {head}}).to_host_f32();
        double sum = 0.0;
        for (std::size_t q = 1; q < seq; ++q) sum += p[q * seq + q - 1];
        if (sum / static_cast<double>(seq - 1) > best) {
          best = sum / static_cast<double>(seq - 1);
          best_head = head;
        }
      }
      std::printf("   layer %zu: head %-2zu  mean weight on the previous token %.3f %s\n", layer, best_head, best,
                  bar(static_cast<float>(best)).c_str());
    }

    if (!options_.heatmap.empty()) {
      const std::size_t layer = options_.heatmap_layer.value_or(cache.n_layers() - 1);
      const std::vector<float> mean = cache.head_mean(layer).to_host_f32();
      const std::string& path = options_.heatmap;
      if (path.size() >= 4 && path.compare(path.size() - 4, 4, ".svg") == 0) {
        write_heatmap_svg(path, mean, seq, seq, s_.tokens, s_.tokens,
                          "Layer " + std::to_string(layer) + ", mean of heads 0-" + std::to_string(kHeads - 1));
        std::printf("\n   heatmap of layer %zu's head-mean pattern (rows: queries, columns: keys, labelled with the\n"
                    "   tokens; colour: sqrt(weight), viridis, with its scale) written to %s\n",
                    layer, path.c_str());
      } else {
        const std::size_t cell = std::max<std::size_t>(4, 480 / seq);
        write_heatmap_png(path, mean, seq, seq, cell);
        std::printf("\n   heatmap of layer %zu's head-mean pattern (rows: queries, columns: keys, in token order;\n"
                    "   colour: sqrt(weight), viridis) written to %s (%zu x %zu px; FILE.svg adds token labels and\n"
                    "   a colour scale)\n",
                    layer, path.c_str(), seq * cell, seq * cell);
      }
    }

    const std::string file = (std::filesystem::temp_directory_path() / "micache_demo_attention.safetensors").string();
    cache.save(file);
    const AttentionCache reloaded = AttentionCache::load(file, options_.device);
    const bool same = reloaded.get_layer(5)->to_host_bytes() == cache.get_layer(5)->to_host_bytes();
    std::printf("\n   saved with AttentionCache::save (%s, tensors blocks.{i}.attn.hook_pattern) and read back: %s\n",
                kib(std::filesystem::file_size(file)).c_str(), same ? "identical" : "DIFFERENT");
    std::filesystem::remove(file);
  }

  void kv_under_budget() {
    const SafetensorsReader file(passage_.path);
    const std::size_t seq = passage_.tokens.size();
    constexpr std::size_t kLayers = 6;
    std::vector<std::vector<float>> keys, values;  // per layer, [heads, seq, head_dim] on the host
    for (std::size_t layer = 0; layer < kLayers; ++layer) {
      keys.push_back(file.read("blocks." + std::to_string(layer) + ".attn.k_cache").to_host_f32());
      values.push_back(file.read("blocks." + std::to_string(layer) + ".attn.v_cache").to_host_f32());
    }
    const std::size_t per_token = kLayers * 2 * kHeads * kHeadDim * dtype_size(DType::BF16);
    const std::size_t budget = 256 * 1024;
    std::printf("\n4. KVCache filled token by token under a %s budget (candle-mi's 3/4 rule)\n", kib(budget).c_str());
    std::printf("   \"%s...\" (%zu tokens); %zu layers x [1, %zu, seq, %zu] bf16 = %zu bytes per token\n",
                passage_.text.substr(0, 40).c_str(), seq, kLayers, kHeads, kHeadDim, per_token);
    KVCache cache(kLayers);
    std::vector<float> token_keys(kHeads * kHeadDim), token_values(kHeads * kHeadDim);
    for (std::size_t t = 0; t < seq; ++t) {
      for (std::size_t layer = 0; layer < kLayers; ++layer) {
        for (std::size_t h = 0; h < kHeads; ++h) {
          const std::size_t from = (h * seq + t) * kHeadDim;
          std::copy_n(keys[layer].begin() + static_cast<std::ptrdiff_t>(from), kHeadDim,
                      token_keys.begin() + static_cast<std::ptrdiff_t>(h * kHeadDim));
          std::copy_n(values[layer].begin() + static_cast<std::ptrdiff_t>(from), kHeadDim,
                      token_values.begin() + static_cast<std::ptrdiff_t>(h * kHeadDim));
        }
        cache.append(layer, Tensor::from_host(token_keys, {1, kHeads, 1, kHeadDim}, DType::BF16, options_.device),
                     Tensor::from_host(token_values, {1, kHeads, 1, kHeadDim}, DType::BF16, options_.device));
      }
      const std::size_t before = cache.memory_usage();
      if (cache.enforce_memory_limit(budget)) {
        const std::vector<std::size_t> kept = cache.positions(0);
        std::printf("   token %2zu: %s > budget -> trimmed to %zu tokens (positions %zu..%zu), %s used, %s reserved\n",
                    t, kib(before).c_str(), cache.seq_len(), kept.front(), kept.back(),
                    kib(cache.memory_usage()).c_str(), kib(cache.memory_reserved()).c_str());
      }
    }
    const std::size_t in_use = backend_for(options_.device).memory_stats().in_use;
    const std::size_t reserved = cache.memory_reserved();
    cache.shrink_to_fit();
    std::printf("   end: %zu tokens (positions %zu..%zu), %s used; shrink_to_fit: reserved %s -> %s, backend in use %s -> "
                "%s\n",
                cache.seq_len(), cache.first_position(0), cache.positions(0).back(), kib(cache.memory_usage()).c_str(),
                kib(reserved).c_str(), kib(cache.memory_reserved()).c_str(), kib(in_use).c_str(),
                kib(backend_for(options_.device).memory_stats().in_use).c_str());
  }

  void compressed_accuracy() {
    const SafetensorsReader file(passage_.path);
    const std::size_t seq = passage_.tokens.size();
    std::printf("\n5. Compressed KV cache (MultiHeadKvCache) on the model's real keys and values\n");
    std::printf("   %zu tokens x %zu heads x head_dim %zu per layer; the last token's real query per head\n", seq, kHeads,
                kHeadDim);
    std::printf("   %-5s %-4s %-21s %-15s %-18s %s\n", "layer", "bits", "bytes/token (ratio)", "score Pearson",
                "top-1 key agrees", "output cosine (worst head)");
    for (std::size_t layer = 0; layer < 6; ++layer) {
      const std::string prefix = "blocks." + std::to_string(layer) + ".attn.";
      const Tensor keys = file.read(prefix + "k_cache", options_.device).select(0);  // [heads, seq, head_dim]
      const Tensor values = file.read(prefix + "v_cache", options_.device).select(0);
      const std::vector<float> k = keys.to_host_f32(), v = values.to_host_f32();
      const std::vector<float> q_all = file.read(prefix + "q").to_host_f32();
      std::vector<std::vector<float>> queries(kHeads);
      for (std::size_t h = 0; h < kHeads; ++h) {
        const auto from = q_all.begin() + static_cast<std::ptrdiff_t>((h * seq + seq - 1) * kHeadDim);
        queries[h].assign(from, from + static_cast<std::ptrdiff_t>(kHeadDim));
      }
      for (unsigned bits : {3u, 4u}) {
        MultiHeadKvCache cache(kHeads, {.head_dim = kHeadDim, .bits = bits, .projections = kHeadDim / 4, .seed = 1},
                               options_.device);
        cache.heads().push(keys, values);
        const auto scores = cache.attention_scores(queries);
        const auto outputs = cache.attention_output(queries);
        Accuracy a;
        for (std::size_t h = 0; h < kHeads; ++h) a.add_head(queries[h], k, v, h, seq, scores[h], outputs[h]);
        const std::size_t bytes = kHeads * (cache.heads().key_record_bytes() + cache.heads().value_record_bytes());
        char size[32];
        std::snprintf(size, sizeof size, "%zu (%.1fx f32)", bytes, cache.compression_ratio());
        std::printf("   %-5zu %-4u %-21s %-15.4f %2zu/%-15zu %.4f (%.4f)\n", layer, bits, size, a.pearson(),
                    a.top1_agree, kHeads, a.mean_cosine(), a.worst_cosine);
      }
    }
    std::printf("   (for these %zu heads a token's keys and values take %zu bytes in f32, %zu in bf16)\n", kHeads,
                kHeads * 2 * kHeadDim * 4, kHeads * 2 * kHeadDim * 2);
  }

 private:
  // Compressed scores and outputs against exact ones, accumulated over heads.
  struct Accuracy {
    std::vector<double> exact, approx;
    std::size_t top1_agree = 0;
    double cosine_sum = 0.0;
    double worst_cosine = 1.0;
    std::size_t heads = 0;

    void add_head(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                  std::size_t h, std::size_t seq, const std::vector<float>& scores, const std::vector<float>& output) {
      std::vector<double> s(seq);
      for (std::size_t t = 0; t < seq; ++t) {
        double dot = 0.0;
        for (std::size_t i = 0; i < kHeadDim; ++i) dot += static_cast<double>(q[i]) * k[(h * seq + t) * kHeadDim + i];
        s[t] = dot / std::sqrt(static_cast<double>(kHeadDim));
        exact.push_back(s[t]);
        approx.push_back(scores[t]);
      }
      const auto best_exact = std::max_element(s.begin(), s.end()) - s.begin();
      const auto best_approx = std::max_element(scores.begin(), scores.end()) - scores.begin();
      top1_agree += best_exact == best_approx ? 1 : 0;
      const double top = s[static_cast<std::size_t>(best_exact)];
      double total = 0.0;
      std::vector<double> out(kHeadDim, 0.0);
      for (std::size_t t = 0; t < seq; ++t) {
        const double w = std::exp(s[t] - top);
        total += w;
        for (std::size_t i = 0; i < kHeadDim; ++i) out[i] += w * v[(h * seq + t) * kHeadDim + i];
      }
      double dot = 0.0, aa = 0.0, bb = 0.0;
      for (std::size_t i = 0; i < kHeadDim; ++i) {
        out[i] /= total;
        dot += out[i] * output[i];
        aa += out[i] * out[i];
        bb += static_cast<double>(output[i]) * output[i];
      }
      const double cosine = dot / std::sqrt(aa * bb);
      cosine_sum += cosine;
      worst_cosine = std::min(worst_cosine, cosine);
      ++heads;
    }

    double mean_cosine() const { return cosine_sum / static_cast<double>(heads); }

    double pearson() const {
      const double n = static_cast<double>(exact.size());
      const double mx = std::accumulate(exact.begin(), exact.end(), 0.0) / n;
      const double my = std::accumulate(approx.begin(), approx.end(), 0.0) / n;
      double sxy = 0.0, sxx = 0.0, syy = 0.0;
      for (std::size_t i = 0; i < exact.size(); ++i) {
        sxy += (exact[i] - mx) * (approx[i] - my);
        sxx += (exact[i] - mx) * (exact[i] - mx);
        syy += (approx[i] - my) * (approx[i] - my);
      }
      return sxy / std::sqrt(sxx * syy);
    }
  };

  std::string token(std::size_t position) const { return "'" + s_.tokens[position] + "'@" + std::to_string(position); }

  const DemoOptions& options_;
  Sentence s_;
  Sentence passage_;
};

}  // namespace

int run_demo(const DemoOptions& options) {
  const std::string dir = data_dir(options.data);
  Sentence sentence = load_sentence(dir, options.sentence);
  Sentence passage = load_sentence(dir, "s2");
  Backend& backend = backend_for(options.device);
  std::printf("micache %s demo on %s: %s\n", MICACHE_VERSION_STRING, options.device.to_string().c_str(),
              backend.description().c_str());
  std::printf("model: sentence-transformers/all-MiniLM-L6-v2 (6 layers, 12 heads, head_dim 32), data in %s\n",
              dir.c_str());
  std::printf("text:  \"%s\"\ntokens:", sentence.text.c_str());
  for (std::size_t i = 0; i < sentence.tokens.size(); ++i) std::printf(" %zu:%s", i, sentence.tokens[i].c_str());
  std::printf("\n");

  Demo demo(options, std::move(sentence), std::move(passage));
  demo.attention();
  demo.kv_under_budget();
  demo.compressed_accuracy();

  const MemoryStats stats = backend.memory_stats();
  std::printf("\n%s backend memory: %s in use now, peak %s\n", options.device.to_string().c_str(),
              kib(stats.in_use).c_str(), kib(stats.peak).c_str());
  return 0;
}

}  // namespace micache::cli
