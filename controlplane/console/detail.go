package console

import "strings"

// Limits of what an event may carry into the console.
const (
	maxReasonLen = 64
	maxRefLen    = 512
	maxTextLen   = 512
)

// parseDetail reads a decision event's detail: the reason code, then a space
// and the deciding rule (Kind/namespace/name#rule) when there is one. ok is
// false when the reason is not a reason code.
func parseDetail(detail string) (reason, policy, rule string, ok bool) {
	reason, ref, _ := strings.Cut(detail, " ")
	if !reasonCode(reason) || len(ref) > maxRefLen {
		return "", "", "", false
	}
	if i := strings.LastIndexByte(ref, '#'); i >= 0 {
		policy, rule = ref[:i], ref[i+1:]
	} else {
		policy = ref
	}
	return reason, policy, rule, true
}

// reasonCode: lower-case letters and underscores, as the policies.Reason*
// codes are.
func reasonCode(s string) bool {
	if s == "" || len(s) > maxReasonLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 'a' || c > 'z') && c != '_' {
			return false
		}
	}
	return true
}

// clip bounds a free-text field from an event.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Do not cut a UTF-8 sequence in half.
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}
