#pragma once
// Declarations only (see ../../README.md).
namespace gloo {
class Exception;
class IoException;
}  // namespace gloo
