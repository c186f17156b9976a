/* Server URLs for output: the userinfo of nats://user:password@host or nats://token@host
 * is a secret, and a URL is printed in logs, warnings and errors. */
#ifndef RELAY_URL_H
#define RELAY_URL_H

#include <stddef.h>

/* What the userinfo of a URL carries, read the way nats.c reads it: "user:password" is a
 * user and a password; "token" or "token:" is a token; ":password" has no user, and nats.c
 * ignores it. */
enum url_auth { URL_AUTH_NONE, URL_AUTH_USER, URL_AUTH_TOKEN, URL_AUTH_PASSWORD_ONLY };

/* One URL with its password or token replaced by "***": nats://relay:***@host:4222, and
 * a token's URL as "***@host" after the scheme. The user name stays. The userinfo ends at the last
 * '@', as nats.c reads it, so a password holding '@', ':' or ',' is hidden whole (and "a,b" given
 * as one URL hides everything nats.c would send as the password). Truncated to fit buf (size > 0).
 */
void url_redact(const char *url, char *buf, size_t size);

/* The URLs, each redacted, joined with ",". */
void url_redact_list(const char *const *urls, size_t count, char *buf, size_t size);

/* The same inside free text (an error message): what follows a "scheme://" up to a space,
 * a quote or a parenthesis is taken for a URL and redacted. */
void url_redact_text(const char *text, char *buf, size_t size);

/* What one URL's userinfo carries; with URL_AUTH_USER, the user name is copied to user
 * (truncated to fit, size > 0). */
enum url_auth url_auth(const char *url, char *user, size_t size);

#endif
