/* dirmoe: umbrella header for programs that train with libdirmoe. */
#ifndef DIRMOE_H
#define DIRMOE_H

#include "dirmoe/status.h"
#include "dirmoe/log.h"
#include "dirmoe/philox.h"
#include "dirmoe/backend.h"
#include "dirmoe/loader.h"
#include "dirmoe/config.h"
#include "dirmoe/model.h"
#include "dirmoe/train.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Version string of the library, for example "0.1.0". */
const char *dm_version(void);

#ifdef __cplusplus
}
#endif
#endif
