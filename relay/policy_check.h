/* A static look at a Lua policy before any record reaches it: every call written
 * `kumo.a.b(...)` must name a function the relay's `kumo` module has, so that a typo
 * (`kumo.nats.conect`) is refused by --check and at the start, not met at record time. */
#ifndef RELAY_POLICY_CHECK_H
#define RELAY_POLICY_CHECK_H

#include <lua.h>

/* L: the policy's state, its script loaded and init run (package.loaded.kumo is what the
 * script sees, with whatever it added). Returns NULL, or a malloc'd
 * "policy.lua:12: kumo.nats.conect is not a function the relay provides" naming the first
 * such call (and how many more there are). */
char *policy_check_kumo_calls(lua_State *L, const char *path);

#endif
