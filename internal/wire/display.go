package wire

import "strings"

// UnwrapDisplay undoes the line wrapping documentation applies to messages:
// raw line breaks inside JSON strings (which JSON forbids) are removed. It is
// for reading documents and logs, never request bodies.
func UnwrapDisplay(s string) string {
	var sb strings.Builder
	inString, escaped := false, false
	for _, r := range s {
		switch {
		case escaped:
			escaped = false
		case inString && r == '\\':
			escaped = true
		case r == '"':
			inString = !inString
		case inString && (r == '\n' || r == '\r'):
			continue
		}
		sb.WriteRune(r)
	}
	return strings.TrimSpace(sb.String())
}
