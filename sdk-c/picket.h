/*
 * picket.h: the picket rule ABI, version 1, for rules written in C (or anything that can use a
 * C header) and compiled to a wasm32 core module. Header only, freestanding: no libc, no
 * allocation, no memcpy; every function is static inline.
 *
 * The contract itself is docs/abi.md in picket's repository; this header spells it in C:
 *   - the imports the host provides (module "picket"): picket_new_value, picket_is_known,
 *     picket_emit_signal, picket_log;
 *   - PICKET_EXPORT for the four functions a rule exports (picket_abi_version, picket_manifest,
 *     picket_alloc, picket_on_event; the linker exports `memory` itself);
 *   - reading an event in place (picket_event_*), and writing the manifest and signal requests
 *     in their bincode encoding (picket_buf, picket_encode_manifest, picket_encode_new_value).
 *
 * Build a rule with clang and lld (wasm-ld), no libc and no entry point:
 *   clang --target=wasm32-unknown-unknown -O2 -nostdlib -ffreestanding \
 *       -Wl,--no-entry -Wl,--strip-all -I path/to/sdk-c -o my_rule.wasm my_rule.c
 * See sdk-c/example/shadow_reader.c for a whole rule.
 */
#ifndef PICKET_H
#define PICKET_H

#include <stddef.h>
#include <stdint.h>

#define PICKET_ABI_VERSION 1

/* A function the host provides, imported from the module "picket". */
#define PICKET_IMPORT(name) __attribute__((import_module("picket"), import_name(name)))
/* A function the host calls, exported under `name`. */
#define PICKET_EXPORT(name) __attribute__((export_name(name), visibility("default")))

/* ---- imports (docs/abi.md, "Imports") ---- */

/* Whether `value` is new for `group` in the new-value state `state`: 1 new (now learned),
 * 0 known or still learning. Strings are UTF-8, pointer and length, no NUL needed. */
PICKET_IMPORT("new_value")
int32_t picket_new_value(const char *state, int32_t state_len, const char *group,
                         int32_t group_len, const char *value, int32_t value_len);
/* Whether `value` is known for `group` in `state` (1) or not (0), learning nothing. */
PICKET_IMPORT("is_known")
int32_t picket_is_known(const char *state, int32_t state_len, const char *group,
                        int32_t group_len, const char *value, int32_t value_len);
/* Raises the encoded signal request at ptr..ptr+len for the event being handled; returns 0. */
PICKET_IMPORT("emit_signal")
int32_t picket_emit_signal(const uint8_t *ptr, int32_t len);
/* A log line, UTF-8; level is a PICKET_LOG_* value. */
PICKET_IMPORT("log")
void picket_log(int32_t level, const char *ptr, int32_t len);

enum {
    PICKET_LOG_ERROR = 0,
    PICKET_LOG_WARN = 1,
    PICKET_LOG_INFO = 2,
    PICKET_LOG_DEBUG = 3,
    /* The reason of the trap that follows (a failed assertion, say): the host reports it as the
     * failure's cause. */
    PICKET_LOG_PANIC = 4,
};

/* picket_on_event's results. */
enum { PICKET_HANDLER_OK = 0, PICKET_HANDLER_BAD_EVENT = 1 };

enum {
    PICKET_SEVERITY_INFO = 0,
    PICKET_SEVERITY_LOW = 1,
    PICKET_SEVERITY_MEDIUM = 2,
    PICKET_SEVERITY_HIGH = 3,
    PICKET_SEVERITY_CRITICAL = 4,
};

/* An event's access byte. */
enum {
    PICKET_ACCESS_UNKNOWN = 0,
    PICKET_ACCESS_READ = 1,
    PICKET_ACCESS_WRITE = 2,
    PICKET_ACCESS_READ_WRITE = 3,
};

#define PICKET_NS_PER_DAY (86400ull * 1000000000ull)

/* A string: UTF-8 bytes and their length; ptr is NULL for an absent one. */
typedef struct {
    const char *ptr;
    uint32_t len;
} picket_str;

/* The length of a NUL-terminated string. */
static inline uint32_t picket_cstr_len(const char *s) {
    uint32_t n = 0;
    while (s[n]) n++;
    return n;
}

/* Whether `s` is present and equals the NUL-terminated `text`. */
static inline int picket_str_eq(picket_str s, const char *text) {
    if (!s.ptr) return 0;
    uint32_t i = 0;
    for (; i < s.len; i++) {
        if (!text[i] || text[i] != s.ptr[i]) return 0;
    }
    return text[i] == 0;
}

/* ---- the event (docs/abi.md, "Event") ---- */

#define PICKET_EVENT_BASE_HEADER 88
#define PICKET_EVENT_HEADER 112
#define PICKET_ABSENT 0xffffffffu

/* String slots, in header order; CANONICAL_PATH is in the identity extension. */
enum {
    PICKET_SLOT_NODE_NAME = 0,
    PICKET_SLOT_PATH = 1,
    PICKET_SLOT_COMM = 2,
    PICKET_SLOT_EXE = 3,
    PICKET_SLOT_ARGS = 4,
    PICKET_SLOT_CONTAINER_ID = 5,
    PICKET_SLOT_CONTAINER_IMAGE = 6,
    PICKET_SLOT_CANONICAL_PATH = 7,
};

enum {
    PICKET_FLAG_PPID = 1,
    PICKET_FLAG_UID = 2,
    PICKET_FLAG_GID = 4,
    PICKET_FLAG_CONTAINER = 8,
    PICKET_FLAG_FILE_ID = 16,
};

/* An event as the host wrote it into the buffer from picket_alloc. */
typedef struct {
    const uint8_t *bytes;
    uint32_t len;
} picket_event;

static inline uint32_t picket_u32_at(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t picket_u64_at(const uint8_t *p) {
    return (uint64_t)picket_u32_at(p) | (uint64_t)picket_u32_at(p + 4) << 32;
}

static inline uint32_t picket_slot_at(int slot) {
    return slot < 7 ? 32u + (uint32_t)slot * 8u : 104u;
}

/* Checks the header and each string slot's bounds. The host guarantees both (and UTF-8), so this
 * guards against a host of another ABI version rather than against malice. 0 = usable. */
static inline int picket_event_parse(picket_event *event, const uint8_t *bytes, uint32_t len) {
    if (len < PICKET_EVENT_BASE_HEADER) return 1;
    if (bytes[28] != 0 || bytes[29] > 3 || bytes[31] > 1) return 1;
    int slots = 7;
    if (bytes[31] == 1) {
        if (len < PICKET_EVENT_HEADER) return 1;
        slots = 8;
    }
    for (int slot = 0; slot < slots; slot++) {
        uint32_t offset = picket_u32_at(bytes + picket_slot_at(slot));
        uint32_t n = picket_u32_at(bytes + picket_slot_at(slot) + 4);
        if (offset != PICKET_ABSENT && (offset > len || n > len - offset)) return 1;
    }
    event->bytes = bytes;
    event->len = len;
    return 0;
}

/* A string field; absent (ptr NULL) when the host did not know it. */
static inline picket_str picket_event_string(const picket_event *event, int slot) {
    picket_str s = {0, 0};
    if (slot == PICKET_SLOT_CANONICAL_PATH && event->bytes[31] != 1) return s;
    uint32_t at = picket_slot_at(slot);
    uint32_t offset = picket_u32_at(event->bytes + at);
    if (offset == PICKET_ABSENT) return s;
    s.ptr = (const char *)event->bytes + offset;
    s.len = picket_u32_at(event->bytes + at + 4);
    return s;
}

/* The resolved path of the file (always present). */
static inline picket_str picket_event_path(const picket_event *e) {
    return picket_event_string(e, PICKET_SLOT_PATH);
}
/* The executable's path (always present). */
static inline picket_str picket_event_exe(const picket_event *e) {
    return picket_event_string(e, PICKET_SLOT_EXE);
}
/* Where the agent found the same file (device and inode), for the files it watches by
 * identity: match a file by path, then by this (hard links, bind mounts, chroots). */
static inline picket_str picket_event_canonical_path(const picket_event *e) {
    return picket_event_string(e, PICKET_SLOT_CANONICAL_PATH);
}
/* Nanoseconds since the Unix epoch, UTC. */
static inline int64_t picket_event_ts_ns(const picket_event *e) {
    return (int64_t)picket_u64_at(e->bytes);
}
static inline uint32_t picket_event_pid(const picket_event *e) { return picket_u32_at(e->bytes + 8); }
/* A PICKET_ACCESS_* value. */
static inline int picket_event_access(const picket_event *e) { return e->bytes[29]; }
static inline int picket_event_in_container(const picket_event *e) {
    return (e->bytes[30] & PICKET_FLAG_CONTAINER) != 0;
}
/* The real uid, when known (returns 1 and sets *uid). */
static inline int picket_event_uid(const picket_event *e, uint32_t *uid) {
    if (!(e->bytes[30] & PICKET_FLAG_UID)) return 0;
    *uid = picket_u32_at(e->bytes + 16);
    return 1;
}

/* Whether the file may have been read: opened for reading, or with unknown access. */
static inline int picket_event_may_read(const picket_event *e) {
    return picket_event_access(e) != PICKET_ACCESS_WRITE;
}

/* The usual group for new values: the container's image, else its id, else the node's name
 * (or "host") for a process of the node itself. */
static inline picket_str picket_event_workload(const picket_event *e) {
    if (picket_event_in_container(e)) {
        picket_str group = picket_event_string(e, PICKET_SLOT_CONTAINER_IMAGE);
        if (!group.ptr) group = picket_event_string(e, PICKET_SLOT_CONTAINER_ID);
        if (group.ptr) return group;
    }
    picket_str node = picket_event_string(e, PICKET_SLOT_NODE_NAME);
    if (node.ptr) return node;
    picket_str host = {"host", 4};
    return host;
}

/* ---- writing bincode (docs/abi.md, "bincode 2, standard() configuration") ---- */

/* A buffer being written; `overflow` is set (and nothing more written) once it is full. */
typedef struct {
    uint8_t *ptr;
    uint32_t len;
    uint32_t cap;
    int overflow;
} picket_buf;

static inline picket_buf picket_buf_over(uint8_t *ptr, uint32_t cap) {
    picket_buf buf = {ptr, 0, cap, 0};
    return buf;
}

static inline void picket_put_byte(picket_buf *buf, uint8_t byte) {
    if (buf->len >= buf->cap) {
        buf->overflow = 1;
        return;
    }
    buf->ptr[buf->len++] = byte;
}

static inline void picket_put_le(picket_buf *buf, uint64_t value, int bytes) {
    for (int i = 0; i < bytes; i++) picket_put_byte(buf, (uint8_t)(value >> (8 * i)));
}

/* An unsigned integer as a varint: below 251 one byte; else 251, 252 or 253 and 2, 4 or 8
 * little-endian bytes. */
static inline void picket_put_varint(picket_buf *buf, uint64_t value) {
    if (value < 251) {
        picket_put_byte(buf, (uint8_t)value);
    } else if (value <= 0xffffu) {
        picket_put_byte(buf, 251);
        picket_put_le(buf, value, 2);
    } else if (value <= 0xffffffffu) {
        picket_put_byte(buf, 252);
        picket_put_le(buf, value, 4);
    } else {
        picket_put_byte(buf, 253);
        picket_put_le(buf, value, 8);
    }
}

/* A string: its length as a varint, then its bytes. */
static inline void picket_put_str(picket_buf *buf, picket_str s) {
    picket_put_varint(buf, s.len);
    for (uint32_t i = 0; i < s.len; i++) picket_put_byte(buf, (uint8_t)s.ptr[i]);
}

static inline void picket_put_cstr(picket_buf *buf, const char *s) {
    picket_str str = {s, picket_cstr_len(s)};
    picket_put_str(buf, str);
}

/* What a rule says about itself (docs/abi.md, "Manifest"). It subscribes to opens. */
typedef struct {
    const char *id;          /* [a-z0-9][a-z0-9-]*, at most 64 bytes */
    const char *title;       /* non-empty, at most 256 bytes */
    const char *description; /* at most 4096 bytes */
    int severity;            /* PICKET_SEVERITY_* */
    const char *tactic;      /* MITRE ATT&CK tactic, e.g. "TA0006-credential-access" */
    const char *technique;   /* e.g. "T1552-unsecured-credentials" */
    const char *const *basenames; /* file basenames the rule handles; at least one for the kernel prefilter */
    uint32_t basename_count;
    const char *const *path_prefixes; /* absolute prefixes; none = any path */
    uint32_t path_prefix_count;
    uint64_t learning_period_ns;
    uint64_t forget_after_ns;
} picket_manifest;

/* Encodes `m` into `buf` and returns what picket_manifest must return (ptr << 32 | len), or 0
 * when the buffer was too small. The buffer must outlive the call: make it static. */
static inline int64_t picket_encode_manifest(picket_buf *buf, const picket_manifest *m) {
    buf->len = 0;
    buf->overflow = 0;
    picket_put_cstr(buf, m->id);
    picket_put_cstr(buf, m->title);
    picket_put_cstr(buf, m->description);
    picket_put_varint(buf, (uint64_t)m->severity);
    picket_put_cstr(buf, m->tactic);
    picket_put_cstr(buf, m->technique);
    picket_put_varint(buf, 1); /* kinds: one, */
    picket_put_varint(buf, 0); /* open */
    picket_put_varint(buf, m->basename_count);
    for (uint32_t i = 0; i < m->basename_count; i++) picket_put_cstr(buf, m->basenames[i]);
    picket_put_varint(buf, m->path_prefix_count);
    for (uint32_t i = 0; i < m->path_prefix_count; i++) picket_put_cstr(buf, m->path_prefixes[i]);
    picket_put_varint(buf, m->learning_period_ns);
    picket_put_varint(buf, m->forget_after_ns);
    if (buf->overflow) return 0;
    return (int64_t)((uint64_t)(uintptr_t)buf->ptr << 32 | buf->len);
}

/* Encodes a signal request with a new value (docs/abi.md, "Signal request") into `buf`; 0 when
 * it fit. Raise it with picket_emit_signal(buf.ptr, buf.len). */
static inline int picket_encode_new_value(picket_buf *buf, picket_str field, picket_str value,
                                          picket_str group) {
    buf->len = 0;
    buf->overflow = 0;
    picket_put_byte(buf, 1); /* Some(NewValueView { field, value, group }) */
    picket_put_str(buf, field);
    picket_put_str(buf, value);
    picket_put_str(buf, group);
    return buf->overflow;
}

/* Appends key-value context to a request picket_encode_new_value just wrote: `count` pairs,
 * keys[i] and values[i] (keys `[a-z][a-z0-9_.]*`, at most 64 bytes, each once; at most 16
 * pairs). Call it once, after the new value; 0 when it fit. */
static inline int picket_encode_context(picket_buf *buf, uint32_t count, const picket_str *keys,
                                        const picket_str *values) {
    picket_put_varint(buf, count);
    for (uint32_t i = 0; i < count; i++) {
        picket_put_str(buf, keys[i]);
        picket_put_str(buf, values[i]);
    }
    return buf->overflow;
}

/* Asks the host whether `value` is new for `group` in the state `state`. */
static inline int picket_is_new(const char *state, picket_str group, picket_str value) {
    return picket_new_value(state, (int32_t)picket_cstr_len(state), group.ptr, (int32_t)group.len,
                            value.ptr, (int32_t)value.len) == 1;
}

/* ---- memory for events ---- */

/* The start of the heap, after the stack and the static data: wasm-ld defines it. */
extern unsigned char __heap_base;

/* A buffer of `len` bytes at the heap's start, growing the memory as needed; NULL when the
 * memory cannot grow that far. One buffer for every event: what picket_alloc returns. */
static inline uint8_t *picket_heap_buffer(uint32_t len) {
    uintptr_t base = (uintptr_t)&__heap_base;
    uintptr_t have = __builtin_wasm_memory_size(0) * 65536u;
    if (len > 0xffffffffu - base) return 0;
    uintptr_t end = base + len;
    if (end > have) {
        uintptr_t pages = (end - have + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) return 0;
    }
    return (uint8_t *)base;
}

#endif /* PICKET_H */
