#include "micache/position_runs.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "micache/error.hpp"

namespace micache {

PositionRuns PositionRuns::from_increasing(const std::vector<std::size_t>& positions, std::size_t bound,
                                           std::string_view what) {
  PositionRuns out;
  for (std::size_t i = 0; i < positions.size(); ++i) {
    if ((i != 0 && positions[i] <= positions[i - 1]) || positions[i] >= bound) {
      throw Error(ErrorCode::Shape,
                  fmt::format("{}: positions must increase and stay below the next position {}; entry {} is {}", what,
                              bound, i, positions[i]));
    }
    out.append(positions[i], 1);
  }
  return out;
}

void PositionRuns::append(std::size_t begin, std::size_t length) {
  if (length == 0) return;
  if (!runs_.empty()) {
    Run& last = runs_.back();
    const std::size_t end = last.begin + last.length;
    if (begin < end) {
      throw Error(ErrorCode::Shape,
                  fmt::format("PositionRuns::append: position {} is not above the last position {}", begin, end - 1));
    }
    if (begin == end) {
      last.length += length;
      size_ += length;
      return;
    }
  }
  runs_.push_back({begin, length});
  size_ += length;
}

PositionRuns PositionRuns::first(std::size_t count) const {
  PositionRuns out;
  for (const Run& run : runs_) {
    if (count == 0) break;
    const std::size_t take = std::min(count, run.length);
    out.runs_.push_back({run.begin, take});
    out.size_ += take;
    count -= take;
  }
  return out;
}

PositionRuns PositionRuns::without_first(std::size_t count) const {
  PositionRuns out;
  for (const Run& run : runs_) {
    const std::size_t drop = std::min(count, run.length);
    count -= drop;
    if (run.length > drop) {
      out.runs_.push_back({run.begin + drop, run.length - drop});
      out.size_ += run.length - drop;
    }
  }
  return out;
}

PositionRuns PositionRuns::select(const PositionRuns& indices) const {
  if (!indices.empty()) {
    const Run& last = indices.runs_.back();
    if (last.begin + last.length > size_) {
      throw Error(ErrorCode::Shape, fmt::format("PositionRuns::select: index {} out of range for {} positions",
                                                last.begin + last.length - 1, size_));
    }
  }
  PositionRuns out;
  std::size_t run = 0;   // the run holding index `index`
  std::size_t base = 0;  // the index of that run's first position
  for (const Run& wanted : indices.runs_) {
    std::size_t index = wanted.begin;
    std::size_t remaining = wanted.length;
    while (remaining > 0) {
      while (base + runs_[run].length <= index) base += runs_[run++].length;
      const std::size_t take = std::min(remaining, base + runs_[run].length - index);
      out.append(runs_[run].begin + (index - base), take);
      index += take;
      remaining -= take;
    }
  }
  return out;
}

std::vector<std::size_t> PositionRuns::expand() const {
  std::vector<std::size_t> out;
  out.reserve(size_);
  for (const Run& run : runs_) {
    for (std::size_t i = 0; i < run.length; ++i) out.push_back(run.begin + i);
  }
  return out;
}

std::size_t PositionRuns::front() const {
  if (runs_.empty()) throw Error(ErrorCode::Shape, "PositionRuns::front: no positions");
  return runs_.front().begin;
}

}  // namespace micache
