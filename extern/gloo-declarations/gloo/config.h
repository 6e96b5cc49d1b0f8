#pragma once
// Declarations only (see ../README.md): the build's configuration header. The harness compiles no
// Gloo code, so no feature macro is set.
