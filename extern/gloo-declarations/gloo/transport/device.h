#pragma once
// Declarations only (see ../../README.md): held through shared_ptr / unique_ptr.
namespace gloo::transport {
class Device;
class UnboundBuffer;
}  // namespace gloo::transport
