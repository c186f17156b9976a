/* The built-in policy: every record, as is, to one subject template. */
#ifndef RELAY_BUILTIN_H
#define RELAY_BUILTIN_H

#include "policy.h"

struct builtin;

struct builtin *builtin_create(const struct config *cfg, const struct policy_env *env, char **err);
enum policy_verdict builtin_handle(struct builtin *b, struct inflight_record *rec,
                                   const struct segment_record *sr, struct policy_reason *reason);
void builtin_destroy(struct builtin *b);

#endif
