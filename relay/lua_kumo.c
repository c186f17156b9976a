/* The `kumo` module: the helpers KumoMTA policies call, with KumoMTA's behaviour wherever a
 * policy could tell the difference. kumo.serde is lua_json.c. */
#include "lua_kumo.h"

#include "log.h"
#include "lua_helpers.h"
#include "lua_json.h"
#include "lua_record.h"
#include "xalloc.h"

#include <lauxlib.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REJECT_METATABLE "kumo.reject"

/* ---- durations ---------------------------------------------------------------------- */

/* humantime's units (KumoMTA parses durations with the humantime crate), case-sensitive:
 * "M" is a month, "m" a minute. Units below a millisecond count in ns, the rest in ms. */
static const struct duration_unit {
    const char *name;
    int64_t ms;
    int64_t ns;
} duration_units[] = {
    {"nanos", 0, 1},
    {"nsec", 0, 1},
    {"ns", 0, 1},
    {"usec", 0, 1000},
    {"us", 0, 1000},
    {"millis", 1, 0},
    {"msec", 1, 0},
    {"ms", 1, 0},
    {"seconds", 1000, 0},
    {"second", 1000, 0},
    {"secs", 1000, 0},
    {"sec", 1000, 0},
    {"s", 1000, 0},
    {"minutes", 60000, 0},
    {"minute", 60000, 0},
    {"mins", 60000, 0},
    {"min", 60000, 0},
    {"m", 60000, 0},
    {"hours", 3600000, 0},
    {"hour", 3600000, 0},
    {"hrs", 3600000, 0},
    {"hr", 3600000, 0},
    {"h", 3600000, 0},
    {"days", 86400000, 0},
    {"day", 86400000, 0},
    {"d", 86400000, 0},
    {"weeks", 604800000, 0},
    {"week", 604800000, 0},
    {"w", 604800000, 0},
    {"months", 2630016000, 0}, /* 30.44 days, as humantime */
    {"month", 2630016000, 0},
    {"M", 2630016000, 0},
    {"years", 31557600000, 0}, /* 365.25 days */
    {"year", 31557600000, 0},
    {"y", 31557600000, 0},
};

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static const struct duration_unit *duration_unit_find(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(duration_units) / sizeof(duration_units[0]); i++)
        if (strlen(duration_units[i].name) == len && memcmp(duration_units[i].name, name, len) == 0)
            return &duration_units[i];
    return NULL;
}

/* "<digits> [space] <unit>" repeated, as humantime::parse_duration: "1h 30m", "1h30m",
 * "7 days". No fractions, no sign, a unit is required. */
static int humantime_parse(const char *p, size_t len, int64_t *out)
{
    const char *end = p + len;
    int64_t ms = 0, ns = 0;
    bool any = false;
    for (;;) {
        while (p < end && is_space(*p))
            p++;
        if (p == end)
            break;
        if (!is_digit(*p))
            return -1;
        int64_t n = 0;
        for (; p < end && is_digit(*p); p++)
            if (__builtin_mul_overflow(n, 10, &n) || __builtin_add_overflow(n, *p - '0', &n))
                return -1;
        while (p < end && is_space(*p))
            p++;
        const char *unit = p;
        while (p < end && is_alpha(*p))
            p++;
        const struct duration_unit *u = duration_unit_find(unit, (size_t)(p - unit));
        int64_t part;
        if (!u || __builtin_mul_overflow(n, u->ms ? u->ms : u->ns, &part))
            return -1;
        if (__builtin_add_overflow(u->ms ? ms : ns, part, u->ms ? &ms : &ns))
            return -1;
        any = true;
    }
    if (!any || __builtin_add_overflow(ms, ns / 1000000, out))
        return -1;
    return 0;
}

/* A number is seconds (duration_serde accepts integers and floats). */
static int seconds_to_ms(lua_State *L, int idx, int64_t *ms)
{
    if (lua_isinteger(L, idx)) {
        lua_Integer s = lua_tointeger(L, idx);
        return s < 0 || __builtin_mul_overflow(s, 1000, ms) ? -1 : 0;
    }
    lua_Number s = lua_tonumber(L, idx);
    if (!isfinite(s) || s < 0 || s * 1000 >= 9.2e18)
        return -1;
    *ms = llround(s * 1000);
    return 0;
}

int lua_kumo_duration(lua_State *L, int idx, int64_t *ms)
{
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
        return seconds_to_ms(L, idx, ms);
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        return humantime_parse(s, len, ms);
    }
    default:
        return -1;
    }
}

/* ---- queue config ------------------------------------------------------------------- */

/* What a key's value must be. Checked like KumoMTA's serde(deny_unknown_fields) structs:
 * an unknown key anywhere is an error rather than a silently ignored typo. */
enum qc_kind {
    QC_DURATION, /* humantime or seconds; stored as int64_t ms when the key has a field */
    QC_STRING,   /* stored as a malloc'd copy when the key has a field */
    QC_RATE,     /* a throttle spec string such as "100/s" */
    QC_COUNT,    /* a positive integer, stored as size_t */
    QC_INTEGER,
    QC_TABLE, /* opaque to the relay (smtp options, shrink_policy) */
    QC_PROTOCOL,
    QC_CUSTOM_LUA,
};

#define NO_FIELD SIZE_MAX

struct qc_key {
    const char *name;
    enum qc_kind kind;
    size_t field; /* offset in struct queue_config, or NO_FIELD */
};

static const struct qc_key queue_keys[] = {
    {"protocol", QC_PROTOCOL, NO_FIELD},
    {"retry_interval", QC_DURATION, offsetof(struct queue_config, retry_interval_ms)},
    {"max_retry_interval", QC_DURATION, offsetof(struct queue_config, max_retry_interval_ms)},
    {"max_age", QC_DURATION, offsetof(struct queue_config, max_age_ms)},
    {"reap_interval", QC_DURATION, NO_FIELD},
    {"refresh_interval", QC_DURATION, NO_FIELD},
    {"timerwheel_tick_interval", QC_DURATION, NO_FIELD},
    {"egress_pool", QC_STRING, NO_FIELD},
    {"provider_name", QC_STRING, NO_FIELD},
    {"timezone", QC_STRING, NO_FIELD},
    {"strategy", QC_STRING, NO_FIELD},
    {"refresh_strategy", QC_STRING, NO_FIELD},
    {"max_message_rate", QC_RATE, NO_FIELD},
    {"max_connection_rate", QC_RATE, NO_FIELD},
    {"shrink_policy", QC_TABLE, NO_FIELD},
    {NULL, 0, 0},
};

/* DeliveryProto is an untagged enum: { smtp = {...} }, { custom_lua = {...} } or
 * { maildir_path = ..., dir_mode = ..., file_mode = ... }. */
static const struct qc_key protocol_keys[] = {
    {"smtp", QC_TABLE, NO_FIELD},          {"custom_lua", QC_CUSTOM_LUA, NO_FIELD},
    {"maildir_path", QC_STRING, NO_FIELD}, {"dir_mode", QC_INTEGER, NO_FIELD},
    {"file_mode", QC_INTEGER, NO_FIELD},   {NULL, 0, 0},
};

static const struct qc_key custom_lua_keys[] = {
    {"constructor", QC_STRING, offsetof(struct queue_config, constructor)},
    {"batch_size", QC_COUNT, offsetof(struct queue_config, batch_size)},
    {"min_batch_size", QC_COUNT, offsetof(struct queue_config, min_batch_size)},
    {"max_batch_latency", QC_DURATION, offsetof(struct queue_config, max_batch_latency_ms)},
    {NULL, 0, 0},
};

static char *qc_fields(lua_State *L, int idx, const struct qc_key *keys, const char *path,
                       struct queue_config *qc);

/* The value at idx, for an error message: strings quoted, anything else by type. */
static const char *qc_describe(lua_State *L, int idx)
{
    if (lua_type(L, idx) == LUA_TSTRING)
        return lua_pushfstring(L, "\"%s\"", lua_tostring(L, idx));
    return lua_pushstring(L, luaL_typename(L, idx));
}

static char *qc_type_error(lua_State *L, const char *path, const char *name, const char *what,
                           int idx)
{
    char *err = xasprintf("make_queue_config: %s%s: expected %s, got %s", path, name, what,
                          qc_describe(L, idx));
    lua_pop(L, 1);
    return err;
}

/* The protocols without fields are plain strings (serde's unit variants). */
static bool qc_unit_protocol(lua_State *L, int idx)
{
    static const char *const names[] = {"Null", "HttpInjectionGenerator", "DeferredSmtpInjection"};
    if (lua_type(L, idx) != LUA_TSTRING)
        return false;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(lua_tostring(L, idx), names[i]) == 0)
            return true;
    return false;
}

static char *qc_protocol(lua_State *L, int idx, struct queue_config *qc)
{
    if (qc_unit_protocol(L, idx))
        return NULL;
    if (!lua_istable(L, idx))
        return qc_type_error(L, "", "protocol", "a table", idx);
    char *err = qc_fields(L, idx, protocol_keys, "protocol.", qc);
    if (err)
        return err;
    int kinds = 0;
    static const char *const variants[] = {"smtp", "custom_lua", "maildir_path"};
    for (size_t i = 0; i < 3; i++) {
        kinds += lua_getfield(L, idx, variants[i]) != LUA_TNIL;
        lua_pop(L, 1);
    }
    if (kinds != 1)
        return xasprintf("make_queue_config: protocol: expected exactly one of smtp, custom_lua, "
                         "maildir_path");
    return NULL;
}

static char *qc_custom_lua(lua_State *L, int idx, struct queue_config *qc)
{
    if (!lua_istable(L, idx))
        return qc_type_error(L, "protocol.", "custom_lua", "a table", idx);
    char *err = qc_fields(L, idx, custom_lua_keys, "protocol.custom_lua.", qc);
    if (err)
        return err;
    if (!qc->constructor)
        return xasprintf("make_queue_config: protocol.custom_lua.constructor is required");
    if (qc->min_batch_size > qc->batch_size)
        return xasprintf("make_queue_config: protocol.custom_lua.min_batch_size (%zu) is larger "
                         "than batch_size (%zu)",
                         qc->min_batch_size, qc->batch_size);
    return NULL;
}

/* Check the value at idx against key; store it into qc when the key has a field. */
static char *qc_value(lua_State *L, int idx, const struct qc_key *key, const char *path,
                      struct queue_config *qc)
{
    char *field = key->field == NO_FIELD ? NULL : (char *)qc + key->field;
    int64_t ms;
    lua_Integer n = 0;
    int isnum;
    switch (key->kind) {
    case QC_DURATION:
        if (lua_kumo_duration(L, idx, &ms) != 0)
            return qc_type_error(L, path, key->name, "a duration", idx);
        if (field)
            memcpy(field, &ms, sizeof(ms));
        return NULL;
    case QC_STRING:
    case QC_RATE:
        if (lua_type(L, idx) != LUA_TSTRING)
            return qc_type_error(L, path, key->name, "a string", idx);
        if (field)
            *(char **)field = xstrdup(lua_tostring(L, idx));
        return NULL;
    case QC_COUNT:
    case QC_INTEGER:
        /* lua_tointegerx alone would also accept the string "3"; serde would not. */
        isnum = 0;
        if (lua_type(L, idx) == LUA_TNUMBER)
            n = lua_tointegerx(L, idx, &isnum);
        if (!isnum || n < (key->kind == QC_COUNT ? 1 : 0))
            return qc_type_error(
                L, path, key->name,
                key->kind == QC_COUNT ? "a positive integer" : "a non-negative integer", idx);
        if (field)
            *(size_t *)field = (size_t)n;
        return NULL;
    case QC_TABLE:
        return lua_istable(L, idx) ? NULL : qc_type_error(L, path, key->name, "a table", idx);
    case QC_PROTOCOL:
        return qc_protocol(L, idx, qc);
    case QC_CUSTOM_LUA:
        return qc_custom_lua(L, idx, qc);
    }
    return NULL;
}

static const struct qc_key *qc_key_find(lua_State *L, int idx, const struct qc_key *keys)
{
    if (lua_type(L, idx) != LUA_TSTRING)
        return NULL;
    const char *name = lua_tostring(L, idx);
    for (; keys->name; keys++)
        if (strcmp(keys->name, name) == 0)
            return keys;
    return NULL;
}

/* Walk every key of the table at idx: unknown keys are errors, known ones are checked. */
static char *qc_fields(lua_State *L, int idx, const struct qc_key *keys, const char *path,
                       struct queue_config *qc)
{
    int top = lua_gettop(L);
    char *err = NULL;
    luaL_checkstack(L, 6, "queue config");
    lua_record_fill(L, idx);
    lua_pushnil(L);
    while (!err && lua_next(L, idx)) {
        const struct qc_key *key = qc_key_find(L, -2, keys);
        if (!key) {
            /* luaL_tolstring pushes a copy: converting the key in place would break lua_next. */
            err = xasprintf("make_queue_config: unknown key \"%s%s\"", path,
                            luaL_tolstring(L, -2, NULL));
            break;
        }
        err = qc_value(L, lua_gettop(L), key, path, qc);
        lua_pop(L, 1);
    }
    lua_settop(L, top);
    return err;
}

char *lua_kumo_queue_config(lua_State *L, int idx, struct queue_config *qc)
{
    *qc = (struct queue_config){
        .batch_size = 1,
        .min_batch_size = 1,
        .retry_interval_ms = 20LL * 60 * 1000,
        .max_age_ms = 7LL * 86400 * 1000,
    };
    idx = lua_absindex(L, idx);
    if (!lua_istable(L, idx))
        return qc_type_error(L, "", "queue config", "a table", idx);
    char *err = qc_fields(L, idx, queue_keys, "", qc);
    if (err)
        lua_kumo_queue_config_free(qc);
    return err;
}

void lua_kumo_queue_config_free(struct queue_config *qc)
{
    free(qc->constructor);
    qc->constructor = NULL;
}

/* Raise err (malloc'd) as a Lua error at the caller's position. */
static int raise_owned(lua_State *L, char *err)
{
    luaL_where(L, 1);
    lua_pushstring(L, err);
    free(err);
    lua_concat(L, 2);
    return lua_error(L);
}

/* Validates like KumoMTA and returns a shallow copy, so a policy that edits its own table
 * afterwards cannot slip an unchecked value past the validation. */
static int kumo_make_queue_config(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    struct queue_config qc;
    char *err = lua_kumo_queue_config(L, 1, &qc);
    if (err)
        return raise_owned(L, err);
    lua_kumo_queue_config_free(&qc);
    lua_settop(L, 1);
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, 2);
    }
    return 1;
}

/* ---- reject ------------------------------------------------------------------------- */

/* The error value is a table with a private metatable, so the relay can tell a deliberate
 * rejection (transient for 4xx, permanent otherwise) from any other Lua error. */
static int kumo_reject(lua_State *L)
{
    lua_Integer code = luaL_checkinteger(L, 1);
    luaL_argcheck(L, code >= 100 && code <= 599, 1, "an SMTP status code (100-599) expected");
    luaL_checkstring(L, 2);
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, code);
    lua_setfield(L, -2, "code");
    lua_pushvalue(L, 2);
    lua_setfield(L, -2, "message");
    luaL_setmetatable(L, REJECT_METATABLE);
    return lua_error(L);
}

int lua_kumo_record_unusable(lua_State *L, const char *reason)
{
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, 0);
    lua_setfield(L, -2, "code");
    lua_pushstring(L, reason);
    lua_setfield(L, -2, "message");
    luaL_setmetatable(L, REJECT_METATABLE);
    return lua_error(L);
}

static int reject_tostring(lua_State *L)
{
    lua_getfield(L, 1, "code");
    lua_getfield(L, 1, "message");
    if (lua_tointeger(L, -2) == 0)
        lua_pushvalue(L, -1); /* lua_kumo_record_unusable: the reason alone */
    else
        lua_pushfstring(L, "%s %s", lua_tostring(L, -2), lua_tostring(L, -1));
    return 1;
}

bool lua_kumo_is_reject(lua_State *L, int idx, int *code, const char **message)
{
    idx = lua_absindex(L, idx);
    if (!lua_istable(L, idx) || !lua_getmetatable(L, idx))
        return false;
    luaL_getmetatable(L, REJECT_METATABLE);
    bool is_reject = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (!is_reject)
        return false;
    lua_getfield(L, idx, "code");
    lua_getfield(L, idx, "message");
    if (code)
        *code = (int)lua_tointeger(L, -2);
    /* The string stays alive as long as the reject table holds it. */
    if (message)
        *message = lua_tostring(L, -1);
    lua_pop(L, 2);
    return true;
}

static void reject_register(lua_State *L)
{
    if (luaL_newmetatable(L, REJECT_METATABLE)) {
        lua_pushcfunction(L, reject_tostring);
        lua_setfield(L, -2, "__tostring");
        /* Policies cannot reach it through getmetatable, so cannot forge or alter it. */
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
}

/* ---- logging ------------------------------------------------------------------------ */

/* Arguments tostring'd and joined by spaces as KumoMTA does, prefixed with the policy's
 * "file:line: " so an operator can find the call. */
static int kumo_log(lua_State *L, enum log_level level)
{
    if (!log_enabled(level))
        return 0;
    int n = lua_gettop(L);
    lua_Debug ar;
    char where[LUA_IDSIZE + 32] = "";
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
        snprintf(where, sizeof(where), "%s:%d: ", ar.short_src, ar.currentline);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, where);
    for (int i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&b, ' ');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    log_msg(level, "%s", lua_tostring(L, -1));
    return 0;
}

static int kumo_log_error(lua_State *L)
{
    return kumo_log(L, LOG_LEVEL_ERROR);
}

static int kumo_log_warn(lua_State *L)
{
    return kumo_log(L, LOG_LEVEL_WARN);
}

static int kumo_log_info(lua_State *L)
{
    return kumo_log(L, LOG_LEVEL_INFO);
}

static int kumo_log_debug(lua_State *L)
{
    return kumo_log(L, LOG_LEVEL_DEBUG);
}

/* ---- the module --------------------------------------------------------------------- */

int lua_kumo_push_file(lua_State *L, const char *path, const char **failed_to)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        *failed_to = "open";
        return -1;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        luaL_addlstring(&b, chunk, n);
    int failed = ferror(f), saved = errno;
    fclose(f);
    luaL_pushresult(&b);
    if (failed) {
        lua_pop(L, 1);
        errno = saved;
        *failed_to = "read";
        return -1;
    }
    return 0;
}

int lua_kumo_push_json(lua_State *L, const char *text, size_t len, char **err)
{
    return lua_json_push(L, text, len, err);
}

void lua_kumo_open(lua_State *L)
{
    static const luaL_Reg kumo_functions[] = {
        {"make_queue_config", kumo_make_queue_config},
        {"reject", kumo_reject},
        {"json_encode", lua_json_encode}, /* deprecated aliases of kumo.serde.* */
        {"json_encode_pretty", lua_json_encode_pretty},
        {"json_parse", lua_json_parse},
        {"json_load", lua_serde_json_load},
        {"log_error", kumo_log_error},
        {"log_warn", kumo_log_warn},
        {"log_info", kumo_log_info},
        {"log_debug", kumo_log_debug},
        {NULL, NULL},
    };
    reject_register(L);
    luaL_newlib(L, kumo_functions);
    lua_serde_open(L);
    lua_string_open(L);
    lua_encode_open(L);
    lua_uuid_open(L);
    lua_time_open(L);
}
