// The viridis colour map the heatmaps (PNG and SVG) colour their cells with.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace micache::cli {

struct Rgb {
  std::uint8_t r, g, b;
};

/// Viridis at `t` in [0, 1] (clamped; NaN as 0): 9 evenly spaced samples, linear between them.
inline Rgb viridis(float t) {
  constexpr std::array<Rgb, 9> samples{{{68, 1, 84},
                                        {71, 44, 122},
                                        {59, 81, 139},
                                        {44, 113, 142},
                                        {33, 144, 141},
                                        {39, 173, 129},
                                        {92, 200, 99},
                                        {170, 220, 50},
                                        {253, 231, 37}}};
  const float x = std::clamp(std::isnan(t) ? 0.0f : t, 0.0f, 1.0f) * static_cast<float>(samples.size() - 1);
  const std::size_t i = std::min(static_cast<std::size_t>(x), samples.size() - 2);
  const float f = x - static_cast<float>(i);
  const auto mix = [f](std::uint8_t a, std::uint8_t b) {
    return static_cast<std::uint8_t>(std::lround(static_cast<float>(a) + f * (static_cast<float>(b) - a)));
  };
  return {mix(samples[i].r, samples[i + 1].r), mix(samples[i].g, samples[i + 1].g),
          mix(samples[i].b, samples[i + 1].b)};
}

}  // namespace micache::cli
