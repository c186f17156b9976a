#include "msgid.h"

#include "decimal.h"
#include "fnv.h"
#include "xalloc.h"

#include <string.h>

uint32_t msgid_dir_tag(const char *dir_path)
{
    return fnv32_str(dir_path);
}

char *msgid_segment_name(const char *dir_path, size_t dir, const char *file)
{
    if (dir == 0)
        return xstrdup(file);
    return xasprintf("%08x:%s", msgid_dir_tag(dir_path), file);
}

char *msgid_id_name(const char *name, uint32_t generation)
{
    return generation ? xasprintf("%s~%u", name, generation) : xstrdup(name);
}

struct out {
    char *buf;
    size_t cap, len;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->len < o->cap) {
        size_t room = o->cap - 1 - o->len;
        memcpy(o->buf + o->len, s, n < room ? n : room);
    }
    o->len += n;
}

static void put_number(struct out *o, uint64_t v)
{
    char digits[DECIMAL_MAX];
    put(o, digits, decimal_put(digits, v));
}

size_t msgid_format(char *out, size_t cap, const char *relay_id, const char *id_name, uint64_t end,
                    bool has_index, uint32_t index)
{
    struct out o = {.buf = out, .cap = cap};
    put(&o, relay_id, strlen(relay_id));
    put(&o, ":", 1);
    put(&o, id_name, strlen(id_name));
    put(&o, ":", 1);
    put_number(&o, end);
    if (has_index) {
        put(&o, ":", 1);
        put_number(&o, index);
    }
    if (cap)
        out[o.len < cap ? o.len : cap - 1] = '\0';
    return o.len;
}

bool msgid_is_ours(const char *id, const char *relay_id)
{
    size_t n = strlen(relay_id);
    return strncmp(id, relay_id, n) == 0 && id[n] == ':';
}

/* A number as msgid_format writes it: digits, no leading zero, within max. */
static bool number(const char *s, size_t len, uint64_t max, uint64_t *v)
{
    if (len == 0 || len > 20 || (len > 1 && s[0] == '0'))
        return false;
    uint64_t x = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        if (x > (max - d) / 10)
            return false;
        x = x * 10 + d;
    }
    *v = x;
    return true;
}

static const char *last_colon(const char *s, const char *end)
{
    for (const char *p = end; p > s; p--)
        if (p[-1] == ':')
            return p - 1;
    return NULL;
}

/* The readings of one id name (with and without a generation) into out; returns how many. */
static size_t readings_of(const char *name, size_t len, struct msgid_reading base,
                          struct msgid_reading *out)
{
    size_t n = 0;
    if (len == 0)
        return 0;
    base.name = name;
    base.name_len = len;
    base.generation = 0;
    out[n++] = base;
    const char *tilde = NULL;
    for (const char *p = name + len; p > name; p--) {
        if (p[-1] == '~') {
            tilde = p - 1;
            break;
        }
    }
    uint64_t generation;
    if (tilde && tilde > name &&
        number(tilde + 1, (size_t)(name + len - tilde - 1), UINT32_MAX, &generation) &&
        generation > 0) {
        base.name_len = (size_t)(tilde - name);
        base.generation = (uint32_t)generation;
        out[n++] = base;
    }
    return n;
}

size_t msgid_parse(const char *id, const char *relay_id, struct msgid_reading out[MSGID_READINGS])
{
    if (!msgid_is_ours(id, relay_id))
        return 0;
    const char *rest = id + strlen(relay_id) + 1;
    const char *stop = rest + strlen(rest);
    size_t n = 0;
    const char *c1 = last_colon(rest, stop);
    if (!c1)
        return 0;
    struct msgid_reading r = {0};
    /* "<id name>:<end>" */
    if (number(c1 + 1, (size_t)(stop - c1 - 1), UINT64_MAX, &r.end))
        n += readings_of(rest, (size_t)(c1 - rest), r, out + n);
    /* "<id name>:<end>:<index>" */
    const char *c2 = last_colon(rest, c1);
    uint64_t index;
    if (c2 && number(c1 + 1, (size_t)(stop - c1 - 1), UINT32_MAX, &index) &&
        number(c2 + 1, (size_t)(c1 - c2 - 1), UINT64_MAX, &r.end)) {
        r.has_index = true;
        r.index = (uint32_t)index;
        n += readings_of(rest, (size_t)(c2 - rest), r, out + n);
    }
    return n;
}

/* FNV alone mixes the last bytes poorly; the splitmix64 finalizer spreads them. */
static uint64_t mix(uint64_t h)
{
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
    return h ^ (h >> 31);
}

static uint64_t hash_with(uint64_t seed, const char *relay_id, const char *id_name, uint64_t end)
{
    unsigned char bytes[8];
    for (int i = 0; i < 8; i++)
        bytes[i] = (unsigned char)(end >> (8 * i));
    /* The NULs keep ("ab", "c") and ("a", "bc") apart. */
    uint64_t h = fnv64_update(seed, relay_id, strlen(relay_id) + 1);
    h = fnv64_update(h, id_name, strlen(id_name) + 1);
    return mix(fnv64_update(h, bytes, sizeof(bytes)));
}

void msgid_hash128(const char *relay_id, const char *id_name, uint64_t end, uint64_t out[2])
{
    out[0] = hash_with(FNV64_OFFSET, relay_id, id_name, end);
    out[1] = hash_with(0x84222325cbf29ce4ULL, relay_id, id_name, end);
}
