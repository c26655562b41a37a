#include "ref_ops.h"
