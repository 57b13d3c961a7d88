// Runs the threads of one CUDA block as fibers (fibers.cpp); used by the stand-in's launches.
#pragma once

#include <functional>
#include <string>

#include "kernel_host.h"

namespace standin {

// Runs `body` once per thread of a block of `dim` threads with blockIdx = `block`, threadIdx set
// per thread. Returns "" or what went wrong (threads deadlocked at different barriers).
std::string run_block(Coord block, Coord dim, const std::function<void()>& body);

}  // namespace standin
