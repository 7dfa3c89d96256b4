#include "src/quant/codebook.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <utility>

namespace micache::detail {
namespace {

constexpr double kHalfPi = 1.57079632679489661923;
constexpr std::size_t kGridPoints = std::size_t{1} << 17;
constexpr int kMaxIterations = 100;
constexpr double kTolerance = 1e-10;

/// Probability mass and first and second moments of t over an interval.
struct Moments {
  double mass = 0.0;
  double first = 0.0;
  double second = 0.0;
};

Moments operator-(const Moments& a, const Moments& b) {
  return {a.mass - b.mass, a.first - b.first, a.second - b.second};
}

/// The (unnormalised) density of t = sqrt(p) sin(theta) as prefix sums over a
/// midpoint grid in theta, where it is cos(theta)^(p-2) dtheta. Moments of
/// {t < b} interpolate linearly inside the grid cell that holds b.
class SphereMarginal {
 public:
  explicit SphereMarginal(std::uint32_t p) : sqrt_p_(std::sqrt(static_cast<double>(p))) {
    const double exponent = static_cast<double>(p) - 2.0;
    // Beyond theta_max the density is below 1e-40 of its peak (all of (-pi/2, pi/2) for small p).
    theta_max_ = exponent == 0.0 ? kHalfPi : std::min(kHalfPi, std::acos(std::exp(std::log(1e-40) / exponent)));
    step_ = 2.0 * theta_max_ / static_cast<double>(kGridPoints);
    prefix_.resize(kGridPoints + 1);
    companded_.resize(kGridPoints + 1);
    for (std::size_t k = 0; k < kGridPoints; ++k) {
      const double theta = -theta_max_ + (static_cast<double>(k) + 0.5) * step_;
      const double cos_theta = std::cos(theta);
      const double w = std::exp(exponent * std::log(cos_theta)) * step_;
      const double t = sqrt_p_ * std::sin(theta);
      prefix_[k + 1] = {prefix_[k].mass + w, prefix_[k].first + w * t, prefix_[k].second + w * t * t};
      // (density of t)^(1/3) dt, up to a constant: (cos^(p-2) / cos)^(1/3) cos dtheta.
      companded_[k + 1] = companded_[k] + std::cbrt(w / step_ * cos_theta * cos_theta) * step_;
    }
  }

  const Moments& total() const { return prefix_.back(); }

  /// Moments of the part of the density where t < b.
  Moments below(double b) const {
    const double theta = std::asin(std::clamp(b / sqrt_p_, -1.0, 1.0));
    const double u = (theta + theta_max_) / step_;
    if (u <= 0.0) {
      return {};
    }
    if (u >= static_cast<double>(kGridPoints)) {
      return total();
    }
    const auto k = static_cast<std::size_t>(u);
    const double frac = u - static_cast<double>(k);
    const Moments cell = prefix_[k + 1] - prefix_[k];
    return {prefix_[k].mass + frac * cell.mass, prefix_[k].first + frac * cell.first,
            prefix_[k].second + frac * cell.second};
  }

  /// d/db of below(b).mass: the density of t at b, in the same units.
  double density_at(double b) const {
    const double theta = std::asin(std::clamp(b / sqrt_p_, -1.0, 1.0));
    const double u = (theta + theta_max_) / step_;
    if (u <= 0.0 || u >= static_cast<double>(kGridPoints)) {
      return 0.0;
    }
    const auto k = static_cast<std::size_t>(u);
    return (prefix_[k + 1].mass - prefix_[k].mass) / step_ / (sqrt_p_ * std::cos(theta));
  }

  /// The t at which the companded measure (density^(1/3) dt) reaches `fraction` of its total.
  double companded_quantile(double fraction) const {
    const double target = fraction * companded_.back();
    const auto it = std::upper_bound(companded_.begin(), companded_.end(), target);
    const auto k = static_cast<std::size_t>(std::max<std::ptrdiff_t>(it - companded_.begin() - 1, 0));
    const double frac = (target - companded_[k]) / (companded_[k + 1] - companded_[k]);
    return sqrt_p_ * std::sin(-theta_max_ + (static_cast<double>(k) + frac) * step_);
  }

 private:
  double sqrt_p_;
  double theta_max_ = 0.0;
  double step_ = 0.0;
  std::vector<Moments> prefix_;    // prefix_[k]: moments of grid cells [0, k)
  std::vector<double> companded_;  // prefix sums of density^(1/3) dt
};

/// Moments of each of the cells that `boundaries` (ascending) cut t into.
std::vector<Moments> cell_moments(const SphereMarginal& density, const std::vector<double>& boundaries) {
  std::vector<Moments> cells(boundaries.size() + 1);
  Moments lower;
  for (std::size_t k = 0; k < cells.size(); ++k) {
    const Moments upper = k < boundaries.size() ? density.below(boundaries[k]) : density.total();
    cells[k] = upper - lower;
    lower = upper;
  }
  return cells;
}

Codebook design_codebook(std::uint32_t padded_dim, std::uint32_t bits) {
  const SphereMarginal density(padded_dim);
  const std::size_t levels = std::size_t{1} << bits;
  std::vector<double> boundaries(levels - 1);
  for (std::size_t k = 0; k + 1 < levels; ++k) {
    boundaries[k] = density.companded_quantile(static_cast<double>(k + 1) / static_cast<double>(levels));
  }
  std::vector<double> centroids(levels);
  std::vector<Moments> cells = cell_moments(density, boundaries);
  for (std::size_t k = 0; k < levels; ++k) {
    centroids[k] = cells[k].first / cells[k].mass;
  }
  // Newton's method on F(c) = c - T(c) = 0, T(c)_k the mean of cell k when the
  // boundaries are the midpoints of c. Cell k's mean depends only on its two
  // boundaries, so the Jacobian is tridiagonal: with f the density and M0 the
  // cell's mass, d mean_k / d upper = f(upper) (upper - mean_k) / M0_k and
  // d mean_k / d lower = f(lower) (mean_k - lower) / M0_k.
  std::vector<double> means(levels), lower_slope(levels, 0.0), upper_slope(levels, 0.0);
  std::vector<double> sub(levels), diag(levels), super(levels), rhs(levels);
  for (int iteration = 0; iteration < kMaxIterations; ++iteration) {
    for (std::size_t k = 0; k + 1 < levels; ++k) {
      boundaries[k] = 0.5 * (centroids[k] + centroids[k + 1]);
    }
    cells = cell_moments(density, boundaries);
    double largest_residual = 0.0;
    for (std::size_t k = 0; k < levels; ++k) {
      means[k] = cells[k].first / cells[k].mass;
      rhs[k] = means[k] - centroids[k];
      largest_residual = std::max(largest_residual, std::abs(rhs[k]));
    }
    if (largest_residual < kTolerance) {
      break;
    }
    for (std::size_t k = 0; k + 1 < levels; ++k) {
      const double f = density.density_at(boundaries[k]);
      upper_slope[k] = f * (boundaries[k] - means[k]) / cells[k].mass;
      lower_slope[k + 1] = f * (means[k + 1] - boundaries[k]) / cells[k + 1].mass;
    }
    for (std::size_t k = 0; k < levels; ++k) {
      sub[k] = -0.5 * lower_slope[k];
      super[k] = -0.5 * upper_slope[k];
      diag[k] = 1.0 + sub[k] + super[k];
    }
    // Thomas algorithm for J delta = rhs.
    for (std::size_t k = 1; k < levels; ++k) {
      const double factor = sub[k] / diag[k - 1];
      diag[k] -= factor * super[k - 1];
      rhs[k] -= factor * rhs[k - 1];
    }
    rhs[levels - 1] /= diag[levels - 1];
    for (std::size_t k = levels - 1; k-- > 0;) {
      rhs[k] = (rhs[k] - super[k] * rhs[k + 1]) / diag[k];
    }
    std::vector<double> next(levels);
    bool ascending = true;
    for (std::size_t k = 0; k < levels; ++k) {
      next[k] = centroids[k] + rhs[k];
      ascending = ascending && (k == 0 || next[k] > next[k - 1]);
    }
    centroids = ascending ? next : means;  // a Lloyd step when Newton overshoots
  }

  Codebook codebook;
  codebook.bits = bits;
  codebook.centroids.resize(levels);
  for (std::size_t k = 0; k < levels / 2; ++k) {
    const auto magnitude = static_cast<float>(0.5 * (centroids[levels - 1 - k] - centroids[k]));
    codebook.centroids[k] = -magnitude;
    codebook.centroids[levels - 1 - k] = magnitude;
  }
  std::vector<double> float_boundaries(levels - 1);
  codebook.boundaries.resize(levels - 1);
  for (std::size_t k = 0; k + 1 < levels; ++k) {
    codebook.boundaries[k] = static_cast<float>(
        0.5 * (static_cast<double>(codebook.centroids[k]) + static_cast<double>(codebook.centroids[k + 1])));
    float_boundaries[k] = codebook.boundaries[k];
  }
  // E[(Q(t) - t)^2] = sum over cells of second - 2 c first + c^2 mass.
  cells = cell_moments(density, float_boundaries);
  double error = 0.0;
  for (std::size_t k = 0; k < levels; ++k) {
    const double c = codebook.centroids[k];
    error += cells[k].second - 2.0 * c * cells[k].first + c * c * cells[k].mass;
  }
  codebook.distortion = error / density.total().mass;
  return codebook;
}

}  // namespace

const Codebook& lloyd_max_codebook(std::uint32_t padded_dim, std::uint32_t bits) {
  static std::mutex mutex;
  static std::map<std::pair<std::uint32_t, std::uint32_t>, std::unique_ptr<const Codebook>> codebooks;
  const std::lock_guard<std::mutex> lock(mutex);
  std::unique_ptr<const Codebook>& slot = codebooks[{padded_dim, bits}];
  if (!slot) {
    slot = std::make_unique<const Codebook>(design_codebook(padded_dim, bits));
  }
  return *slot;
}

}  // namespace micache::detail
