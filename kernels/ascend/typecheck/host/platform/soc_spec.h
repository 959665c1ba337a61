// Empty stand-in: metadef's headers name platform/soc_spec.h, which CANN does not publish; nothing our host code
// uses is declared in it.
#pragma once
