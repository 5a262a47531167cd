#include "core/host_memory.h"

#include <cstdlib>

namespace fluxtrain::core {

void prefer_huge_pages_for_tensors() {
#ifdef __linux__
  ::setenv("THP_MEM_ALLOC_ENABLE", "1", /*overwrite=*/0);
#endif
}

}  // namespace fluxtrain::core
