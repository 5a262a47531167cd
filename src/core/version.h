#pragma once

namespace fluxtrain {
inline constexpr const char* kVersion = "0.1.0";
}
