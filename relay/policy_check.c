#include "policy_check.h"

#include "xalloc.h"

#include <ctype.h>
#include <lauxlib.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_PARTS = 8 };

/* A walk over Lua source that skips comments and strings and counts lines. */
struct scan {
    const char *p, *end;
    int line;
};

static void advance(struct scan *s, size_t n)
{
    for (size_t i = 0; i < n && s->p < s->end; i++, s->p++)
        s->line += *s->p == '\n';
}

/* At "[[" or "[==[": the level (number of '='), or -1 when this is no long bracket. */
static int long_bracket(const struct scan *s)
{
    const char *q = s->p + 1;
    int level = 0;
    if (*s->p != '[')
        return -1;
    while (q < s->end && *q == '=') {
        q++;
        level++;
    }
    return q < s->end && *q == '[' ? level : -1;
}

static void skip_long(struct scan *s, int level)
{
    advance(s, (size_t)level + 2);
    while (s->p < s->end) {
        if (*s->p == ']') {
            const char *q = s->p + 1;
            int n = 0;
            while (q < s->end && *q == '=' && n < level) {
                q++;
                n++;
            }
            if (n == level && q < s->end && *q == ']') {
                advance(s, (size_t)level + 2);
                return;
            }
        }
        advance(s, 1);
    }
}

static void skip_quoted(struct scan *s)
{
    char quote = *s->p;
    advance(s, 1);
    while (s->p < s->end && *s->p != quote && *s->p != '\n') {
        advance(s, *s->p == '\\' ? 2 : 1);
    }
    advance(s, 1);
}

/* Skips whitespace, comments and strings; false at the end. */
static void skip_space(struct scan *s)
{
    while (s->p < s->end) {
        if (isspace((unsigned char)*s->p)) {
            advance(s, 1);
        } else if (s->end - s->p >= 2 && s->p[0] == '-' && s->p[1] == '-') {
            advance(s, 2);
            int level = s->p < s->end ? long_bracket(s) : -1;
            if (level >= 0)
                skip_long(s, level);
            else
                while (s->p < s->end && *s->p != '\n')
                    advance(s, 1);
        } else {
            return;
        }
    }
}

static bool ident_start(char c)
{
    return isalpha((unsigned char)c) || c == '_';
}

static size_t ident_len(const struct scan *s)
{
    size_t n = 0;
    if (s->p < s->end && ident_start(*s->p))
        while (s->p + n < s->end && (ident_start(s->p[n]) || isdigit((unsigned char)s->p[n])))
            n++;
    return n;
}

/* After "kumo": ".a.b", maybe then a call ("(", "{", a string). Fills parts, returns
 * their count (0: "kumo" alone) and sets *called. */
static size_t read_chain(struct scan *s, char parts[][64], bool *called)
{
    size_t count = 0;
    *called = false;
    for (;;) {
        skip_space(s);
        if (s->end - s->p < 2 || s->p[0] != '.' || s->p[1] == '.')
            break;
        advance(s, 1);
        skip_space(s);
        size_t n = ident_len(s);
        if (n == 0 || n >= 64 || count == MAX_PARTS)
            return 0;
        snprintf(parts[count++], 64, "%.*s", (int)n, s->p);
        advance(s, n);
    }
    if (count > 0 && s->p < s->end) {
        char c = *s->p;
        *called = c == '(' || c == '{' || c == '"' || c == '\'' || long_bracket(s) >= 0;
    }
    return count;
}

/* Does package.loaded.kumo.<parts> exist and can it be called? */
static bool resolves(lua_State *L, char parts[][64], size_t count)
{
    int top = lua_gettop(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, "kumo");
    bool ok = true;
    for (size_t i = 0; ok && i < count; i++) {
        ok = lua_type(L, -1) == LUA_TTABLE;
        if (ok)
            lua_getfield(L, -1, parts[i]);
    }
    if (ok && lua_type(L, -1) != LUA_TFUNCTION) {
        ok = luaL_getmetafield(L, -1, "__call") != LUA_TNIL;
    }
    lua_settop(L, top);
    return ok;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return NULL;
    char *text = NULL;
    size_t cap = 0;
    *len = 0;
    for (;;) {
        if (*len + 4096 > cap)
            text = xrealloc(text, cap = cap ? cap * 2 : 8192);
        size_t n = fread(text + *len, 1, cap - *len, f);
        *len += n;
        if (n == 0)
            break;
    }
    fclose(f);
    return text;
}

/* Unknown names met so far: calls, and names only tested ("if kumo.x then"), which
 * excuse calls of the same name (a policy that works with older relays too). */
struct unknown {
    char *dotted;
    int line; /* 0: tested, not called */
};

struct findings {
    struct unknown *items;
    size_t count;
};

static void note(struct findings *f, char parts[][64], size_t count, int line)
{
    char dotted[MAX_PARTS * 65] = "kumo";
    for (size_t i = 0; i < count; i++)
        snprintf(dotted + strlen(dotted), sizeof(dotted) - strlen(dotted), ".%s", parts[i]);
    f->items = xrealloc(f->items, (f->count + 1) * sizeof(*f->items));
    f->items[f->count++] = (struct unknown){xstrdup(dotted), line};
}

/* Was dotted, or a table on its way ("kumo.dkim" for "kumo.dkim.sign"), only tested? */
static bool tested(const struct findings *f, const char *dotted)
{
    for (size_t i = 0; i < f->count; i++) {
        size_t n = strlen(f->items[i].dotted);
        if (f->items[i].line == 0 && strncmp(f->items[i].dotted, dotted, n) == 0 &&
            (dotted[n] == '\0' || dotted[n] == '.'))
            return true;
    }
    return false;
}

/* The first call not excused, and how many more; frees the findings. */
static char *report(struct findings *f, const char *name)
{
    char *first = NULL;
    size_t more = 0;
    for (size_t i = 0; i < f->count; i++) {
        if (f->items[i].line == 0 || tested(f, f->items[i].dotted))
            continue;
        if (first)
            more++;
        else
            first = xasprintf("%s:%d: %s is not a function the relay provides", name,
                              f->items[i].line, f->items[i].dotted);
    }
    for (size_t i = 0; i < f->count; i++)
        free(f->items[i].dotted);
    free(f->items);
    if (first && more) {
        char *both = xasprintf("%s (and %zu more call%s to unknown kumo functions)", first, more,
                               more == 1 ? "" : "s");
        free(first);
        first = both;
    }
    return first;
}

/* Past one token; a "kumo" not after "." or ":" starts a chain to look up. */
static void scan_token(lua_State *L, struct scan *s, char *prev, struct findings *f)
{
    int level = long_bracket(s);
    size_t n = ident_len(s);
    if (*s->p == '"' || *s->p == '\'') {
        skip_quoted(s);
        *prev = '"';
    } else if (level >= 0) {
        skip_long(s, level);
        *prev = '"';
    } else if (n > 0) {
        bool kumo = n == 4 && memcmp(s->p, "kumo", 4) == 0 && *prev != '.' && *prev != ':';
        int line = s->line;
        advance(s, n);
        *prev = 'a';
        char parts[MAX_PARTS][64];
        bool called;
        size_t count = kumo ? read_chain(s, parts, &called) : 0;
        if (count > 0 && !resolves(L, parts, count))
            note(f, parts, count, called ? line : 0);
    } else {
        *prev = *s->p;
        advance(s, 1);
    }
}

char *policy_check_kumo_calls(lua_State *L, const char *path)
{
    size_t len;
    char *text = read_file(path, &len);
    if (!text)
        return NULL; /* loading it worked a moment ago; nothing to add */
    struct scan s = {text, text + len, 1};
    struct findings f = {0};
    char prev = '\0';
    for (skip_space(&s); s.p < s.end; skip_space(&s))
        scan_token(L, &s, &prev, &f);
    free(text);
    const char *slash = strrchr(path, '/');
    return report(&f, slash ? slash + 1 : path);
}
