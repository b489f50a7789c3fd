// Line charts as standalone SVG files, written directly (no plotting program needed): kvc-replay's
// hit ratio against capacity per policy and its lookup latency CDF.
//
//   kvc_replay::chart c{.title = "...", .x_label = "...", .y_label = "...", .log_x = true};
//   c.lines.push_back({"lru", {{1024, 0.31}, {4096, 0.36}}});
//   std::ofstream("hit.svg") << kvc_replay::to_svg(c);
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace kvc_replay {

struct series {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y), drawn in this order
};

struct chart {
  std::string title, x_label, y_label;
  bool log_x = false;  // x on a log2 scale (x > 0)
  std::vector<series> lines;
};

namespace detail {

inline std::string escape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

inline std::string number(double v) {
  char buf[32];
  if (std::fabs(v) >= 10000 || (v != 0 && std::fabs(v) < 0.01)) {
    std::snprintf(buf, sizeof buf, "%.3g", v);
  } else {
    std::snprintf(buf, sizeof buf, "%.4g", v);
  }
  return buf;
}

// About `n` round tick values covering [lo, hi].
inline std::vector<double> ticks(double lo, double hi, int n) {
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / n;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (const double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * mag;
    if (step >= raw) break;
  }
  std::vector<double> out;
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push_back(v);
  return out;
}

}  // namespace detail

inline std::string to_svg(const chart& c) {
  constexpr double w = 720, h = 440, left = 80, right = 180, top = 40, bottom = 60;
  constexpr const char* colours[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                     "#9467bd", "#8c564b", "#e377c2", "#17becf"};
  double x0 = std::numeric_limits<double>::max(), x1 = std::numeric_limits<double>::lowest();
  double y0 = 0, y1 = std::numeric_limits<double>::lowest();
  const auto fx = [&](double x) { return c.log_x ? std::log2(std::max(x, 1e-300)) : x; };
  for (const auto& s : c.lines) {
    for (const auto& [x, y] : s.points) {
      x0 = std::min(x0, fx(x));
      x1 = std::max(x1, fx(x));
      y0 = std::min(y0, y);
      y1 = std::max(y1, y);
    }
  }
  if (x0 > x1) x0 = 0, x1 = 1;
  if (x1 == x0) x0 -= 1, x1 += 1;
  if (!(y1 > y0)) y1 = y0 + 1;
  const auto yt = detail::ticks(y0, y1, 5);
  y1 = std::max(y1, yt.back());
  const auto px = [&](double x) { return left + (fx(x) - x0) / (x1 - x0) * (w - left - right); };
  const auto py = [&](double y) { return h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom); };

  std::string out;
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" "
                "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" "
                "height=\"100%%\" fill=\"white\"/>\n",
                w, h);
  out += buf;
  std::snprintf(buf, sizeof buf, "<text x=\"%g\" y=\"24\" font-size=\"15\">%s</text>\n", left,
                detail::escape(c.title).c_str());
  out += buf;
  // Axes, grid and tick labels.
  for (const double y : yt) {
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%g\" y1=\"%.1f\" x2=\"%g\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                  "<text x=\"%g\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n",
                  left, py(y), w - right, py(y), left - 6, py(y) + 4, detail::number(y).c_str());
    out += buf;
  }
  std::vector<double> xt;
  if (c.log_x) {
    const int step = std::max(1, static_cast<int>(std::ceil((x1 - x0) / 8)));
    for (int e = static_cast<int>(std::ceil(x0)); e <= static_cast<int>(std::floor(x1)); e += step)
      xt.push_back(std::exp2(e));
  } else {
    xt = detail::ticks(x0, x1, 6);
  }
  for (const double x : xt) {
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%.1f\" y1=\"%g\" x2=\"%.1f\" y2=\"%g\" stroke=\"#ddd\"/>"
                  "<text x=\"%.1f\" y=\"%g\" text-anchor=\"middle\">%s</text>\n",
                  px(x), top, px(x), h - bottom, px(x), h - bottom + 18, detail::number(x).c_str());
    out += buf;
  }
  std::snprintf(buf, sizeof buf,
                "<rect x=\"%g\" y=\"%g\" width=\"%g\" height=\"%g\" fill=\"none\" "
                "stroke=\"black\"/>\n<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">%s</text>\n"
                "<text transform=\"translate(18,%g) rotate(-90)\" text-anchor=\"middle\">%s"
                "</text>\n",
                left, top, w - left - right, h - top - bottom, (left + w - right) / 2, h - 16,
                detail::escape(c.x_label).c_str(), (top + h - bottom) / 2,
                detail::escape(c.y_label).c_str());
  out += buf;
  // Lines, markers and the legend.
  for (std::size_t i = 0; i < c.lines.size(); ++i) {
    const auto& s = c.lines[i];
    const char* colour = colours[i % std::size(colours)];
    out += "<polyline fill=\"none\" stroke-width=\"2\" stroke=\"";
    out += colour;
    out += "\" points=\"";
    for (const auto& [x, y] : s.points) {
      std::snprintf(buf, sizeof buf, "%.1f,%.1f ", px(x), py(y));
      out += buf;
    }
    out += "\"/>\n";
    if (s.points.size() <= 32) {
      for (const auto& [x, y] : s.points) {
        std::snprintf(buf, sizeof buf, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n",
                      px(x), py(y), colour);
        out += buf;
      }
    }
    const double ly = top + 10 + 20 * static_cast<double>(i);
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"%s\" "
                  "stroke-width=\"2\"/><text x=\"%g\" y=\"%g\">%s</text>\n",
                  w - right + 12, ly, w - right + 36, ly, colour, w - right + 42, ly + 4,
                  detail::escape(s.name).c_str());
    out += buf;
  }
  out += "</svg>\n";
  return out;
}

}  // namespace kvc_replay
