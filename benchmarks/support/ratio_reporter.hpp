// Benchmark support: Google Benchmark's console output, plus a table of ratios computed at the
// end from the runs of this process (the baseline is always measured in the same run).
#pragma once

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace kvc_bench {

class ratio_reporter : public benchmark::ConsoleReporter {
 public:
  // `table` runs after the last benchmark; it reads results with ns() and counter().
  explicit ratio_reporter(std::function<void(const ratio_reporter&)> table)
      : ConsoleReporter(isatty(STDOUT_FILENO) != 0 ? OO_Defaults : OO_Tabular),
        table_(std::move(table)) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      // With --benchmark_repetitions the median aggregate wins over the single repetitions.
      const bool median = run.run_type == Run::RT_Aggregate && run.aggregate_name == "median";
      if ((run.run_type != Run::RT_Iteration && !median) || run.error_occurred) continue;
      const std::string name = run.run_name.str();
      if (!median && medians_.contains(name)) continue;
      if (median) medians_.insert(name);
      // Adjusted time is in the run's unit; the multiplier converts seconds into that unit.
      ns_[name] = run.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(run.time_unit) * 1e9;
      for (const auto& [key, value] : run.counters) counters_[{name, key}] = value.value;
    }
  }

  void Finalize() override {
    ConsoleReporter::Finalize();
    table_(*this);
  }

  // Real time per iteration of the run named `name` ("bm/arg1/arg2"), in ns; 0 when it did not run.
  [[nodiscard]] double ns(const std::string& name) const {
    auto it = ns_.find(name);
    return it == ns_.end() ? 0.0 : it->second;
  }
  // A user counter of that run (as reported, after rate conversion); 0 when absent.
  [[nodiscard]] double counter(const std::string& name, const std::string& key) const {
    auto it = counters_.find({name, key});
    return it == counters_.end() ? 0.0 : it->second;
  }

 private:
  std::function<void(const ratio_reporter&)> table_;
  std::map<std::string, double> ns_;
  std::map<std::pair<std::string, std::string>, double> counters_;
  std::set<std::string> medians_;
};

// Runs the benchmarks selected on the command line with a ratio_reporter printing `table`.
inline int run_with_table(int argc, char** argv, std::function<void(const ratio_reporter&)> table) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  ratio_reporter reporter(std::move(table));
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}

}  // namespace kvc_bench
