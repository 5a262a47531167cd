// Objective commands of fluxtrain_test_tool (train/flow_matching.h), for tests/parity/test_objective.py.
//   objective-sigmas CASES.json OUT
//     CASES: a list of {sampling, n, tokens, seed, scale, shift[, weighting, logit_mean, logit_std,
//     mode_scale]}; OUT gets "sigmas.{i}" [n] (fp32): case i's sample_sigmas(n, tokens) drawn with a fresh
//     CPU generator seeded `seed`.
//   objective-loss IN CASES.json OUT
//     CASES: a list of {loss, huber_c[, weighting, prediction]}; OUT gets "loss.{i}" (a scalar, fp32):
//     flow_loss of IN's "pred" (through apply_prediction_type with IN's "noisy" and "sigmas" [B]) and
//     "target", weighted by IN's "mask" when IN has one and by loss_weighting(IN's "sigmas").
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "core/enum_names.h"
#include "tool.h"
#include "train/flow_matching.h"

namespace fluxtrain::tool {
namespace {

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

int objective_sigmas(const Args& args) {
  std::map<std::string, at::Tensor> out;
  const nlohmann::json cases = read_json(args.at(0));
  for (size_t i = 0; i < cases.size(); ++i) {
    const nlohmann::json& c = cases[i];
    train::ObjectiveOptions o;
    o.sampling = parse_enum<train::TimestepSampling>(c.at("sampling").get<std::string>(), "sampling");
    o.sigmoid_scale = c.at("scale").get<double>();
    o.discrete_flow_shift = c.at("shift").get<double>();
    o.weighting = parse_enum<train::WeightingScheme>(c.value("weighting", std::string("none")), "weighting");
    o.logit_mean = c.value("logit_mean", o.logit_mean);
    o.logit_std = c.value("logit_std", o.logit_std);
    o.mode_scale = c.value("mode_scale", o.mode_scale);
    at::Generator generator = at::detail::createCPUGenerator(c.at("seed").get<uint64_t>());
    out["sigmas." + std::to_string(i)] =
        train::sample_sigmas(c.at("n").get<int64_t>(), c.at("tokens").get<int64_t>(), o, generator);
  }
  save_tensors(args.at(1), out);
  return 0;
}

int objective_loss(const Args& args) {
  auto in = load_tensors(args.at(0));
  const at::Tensor mask = in.count("mask") ? in.at("mask") : at::Tensor();
  std::map<std::string, at::Tensor> out;
  const nlohmann::json cases = read_json(args.at(1));
  for (size_t i = 0; i < cases.size(); ++i) {
    train::ObjectiveOptions o;
    o.loss = parse_enum<train::LossType>(cases[i].at("loss").get<std::string>(), "loss");
    o.huber_c = cases[i].at("huber_c").get<double>();
    o.weighting = parse_enum<train::WeightingScheme>(cases[i].value("weighting", std::string("none")), "weighting");
    o.prediction = parse_enum<train::PredictionType>(cases[i].value("prediction", std::string("raw")), "prediction");
    at::Tensor pred = in.at("pred"), weights;
    if (in.count("sigmas")) {
      pred = train::apply_prediction_type(o.prediction, pred, in.at("noisy"), in.at("sigmas"));
      weights = train::loss_weighting(o.weighting, in.at("sigmas"));
    }
    out["loss." + std::to_string(i)] = train::flow_loss(pred, in.at("target"), o, mask, weights);
  }
  save_tensors(args.at(2), out);
  return 0;
}

const ToolCommand kSigmas("objective-sigmas", "CASES.json OUT", objective_sigmas);
const ToolCommand kLoss("objective-loss", "IN CASES.json OUT", objective_loss);

}  // namespace
}  // namespace fluxtrain::tool
