// The kernels of kernels/*.cu compiled for the host, and their table for the stand-in's launches.
//
// build.sh compiles this file twice: first without STANDIN_TABLE, to list the `extern "C"`
// functions the kernel sources define (nm); then with STANDIN_TABLE naming the generated list
// (one STANDIN_KERNEL(name) per kernel). Each entry's parameter types are deduced from the function
// itself, so a kernel whose signature changes needs no edit here.

#include <cstring>
#include <type_traits>
#include <utility>

#include "kernel_host.h"
#include "kernels.h"

// STANDIN_SOURCES: a generated file that #includes every kernels/*.cu.
#include STANDIN_SOURCES

namespace standin {
namespace {

template <typename T> T load_arg(void* p) {
    typedef std::remove_cv_t<T> U;
    static_assert(std::is_trivially_copyable<U>::value, "kernel parameters must be trivially copyable");
    U v;
    memcpy(&v, p, sizeof(U));
    return v;
}

template <typename... A, size_t... I>
void invoke(void (*f)(A...), void** params, std::index_sequence<I...>) {
    (void)params;
    f(load_arg<A>(params[I])...);
}

// Calls `f` with its parameters read from `params`, types deduced from `f`.
template <typename... A> void call_with(void (*f)(A...), void** params) {
    invoke(f, params, std::index_sequence_for<A...>{});
}

template <typename... A> std::vector<size_t> arg_sizes(void (*)(A...)) { return {sizeof(A)...}; }

}  // namespace

#ifdef STANDIN_TABLE
#define STANDIN_KERNEL(name) {#name, arg_sizes(name), [](void** p) { call_with(name, p); }},
static const HostKernel kTable[] = {
#include STANDIN_TABLE
};

const HostKernel* find_host_kernel(const char* name) {
    for (const HostKernel& k : kTable)
        if (!strcmp(k.name, name)) return &k;
    return nullptr;
}
#endif

}  // namespace standin
