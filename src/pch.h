// Precompiled header of fluxtrain_lib: the heavy torch includes, compiled once per build.
// Project headers never include <torch/torch.h> themselves.
#pragma once

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>
