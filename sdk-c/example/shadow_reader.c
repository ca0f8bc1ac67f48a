/*
 * An unfamiliar process read /etc/shadow: a picket rule in C, on the ABI alone (picket.h).
 *
 * /etc/shadow holds the password hashes of the node's or the container's users. Its routine
 * readers are few (login, passwd, sshd, PAM helpers), so the rule learns which executables read
 * it, per workload, and raises a signal the first time another one does (MITRE ATT&CK TA0006,
 * T1003.008).
 *
 * Build (clang and lld, no libc, no entry point; `build` beside this file does the same):
 *   clang --target=wasm32-unknown-unknown -O2 -nostdlib -ffreestanding \
 *       -Wl,--no-entry -Wl,--strip-all -I .. -o shadow_reader.wasm shadow_reader.c
 * Test:
 *   picket test shadow_reader.wasm cases/
 */
#include "picket.h"

PICKET_EXPORT("picket_abi_version")
int32_t abi_version(void) { return PICKET_ABI_VERSION; }

/* The manifest's bytes must stay valid after picket_manifest returns: static. */
static uint8_t manifest_bytes[1024];

PICKET_EXPORT("picket_manifest")
int64_t manifest(void) {
    static const char *const basenames[] = {"shadow"};
    static const char *const prefixes[] = {"/etc/"};
    static const picket_manifest m = {
        .id = "shadow-reader",
        .title = "Unfamiliar process read /etc/shadow",
        .description = "A process not seen before in this workload read /etc/shadow, which "
                       "holds the users' password hashes.",
        .severity = PICKET_SEVERITY_HIGH,
        .tactic = "TA0006-credential-access",
        .technique = "T1003.008-etc-passwd-and-etc-shadow",
        .basenames = basenames,
        .basename_count = 1,
        .path_prefixes = prefixes,
        .path_prefix_count = 1,
        .learning_period_ns = 7 * PICKET_NS_PER_DAY,
        .forget_after_ns = 28 * PICKET_NS_PER_DAY,
    };
    picket_buf buf = picket_buf_over(manifest_bytes, sizeof manifest_bytes);
    return picket_encode_manifest(&buf, &m);
}

/* The one event buffer: the host writes each event there, then calls picket_on_event. */
static uint8_t *event_buffer;
static uint32_t event_capacity;

PICKET_EXPORT("picket_alloc")
int32_t alloc(int32_t len) {
    event_buffer = picket_heap_buffer((uint32_t)len);
    event_capacity = event_buffer ? (uint32_t)len : 0;
    return (int32_t)(uintptr_t)event_buffer;
}

/* A signal request: a new value's field, value and group, each at most 4096 bytes. */
static uint8_t signal_bytes[3 * (4096 + 9) + 1];

PICKET_EXPORT("picket_on_event")
int32_t on_event(int32_t ptr, int32_t len) {
    picket_event event;
    if ((uint8_t *)(uintptr_t)ptr != event_buffer || (uint32_t)len > event_capacity ||
        picket_event_parse(&event, event_buffer, (uint32_t)len) != 0) {
        return PICKET_HANDLER_BAD_EVENT;
    }
    if (!picket_event_may_read(&event) || !picket_str_eq(picket_event_path(&event), "/etc/shadow")) {
        return PICKET_HANDLER_OK;
    }
    picket_str group = picket_event_workload(&event);
    picket_str exe = picket_event_exe(&event);
    if (picket_is_new("process.exe", group, exe)) {
        picket_str field = {"process.exe", 11};
        picket_buf buf = picket_buf_over(signal_bytes, sizeof signal_bytes);
        if (picket_encode_new_value(&buf, field, exe, group) == 0) {
            picket_emit_signal(buf.ptr, (int32_t)buf.len);
        }
    }
    return PICKET_HANDLER_OK;
}
