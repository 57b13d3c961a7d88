// The host builds of kernels/*.cu known to the stand-in (kernels.cpp), looked up by name.
#pragma once

#include <cstddef>
#include <vector>

namespace standin {

struct HostKernel {
    const char* name;
    // sizeof each parameter, in order: checked against the PTX's .param list at cuModuleGetFunction.
    std::vector<size_t> arg_sizes;
    // Calls the kernel for the current thread with the launch's kernelParams (one pointer per
    // parameter, pointing at its value, as cuLaunchKernel receives them).
    void (*call)(void** params);
};

// The kernel named `name`, or null when kernels/*.cu has no `extern "C" __global__` of that name.
const HostKernel* find_host_kernel(const char* name);

}  // namespace standin
