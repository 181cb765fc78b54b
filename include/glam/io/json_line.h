// JSON records on one line (metrics.jsonl, `glam plan --json`, build.json), built
// as nlohmann::ordered_json so that the members keep the order they are set in.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

namespace glam {

// `value` in the layout glam's records have always had: ", " between members,
// ": " after keys ({"step": 1, "loss": 2.5}), floating-point numbers with
// `precision` significant digits (%g style) and non-finite ones as null. The
// layout is what resuming (train.cpp) and the job scripts read; nlohmann escapes
// the strings and writes the integers.
std::string json_line(const nlohmann::ordered_json& value, int precision);

// Significant digits of the numbers in metrics.jsonl (training and validation records).
constexpr int kMetricsPrecision = 8;

}  // namespace glam
