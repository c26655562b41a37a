#include "dm_math.h"
