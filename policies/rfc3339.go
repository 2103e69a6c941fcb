package policies

// parseRFC3339Portable reads a Quarantine's expiresAt: it accepts exactly what
// time.Parse(time.RFC3339, s) accepts and returns that instant's
// UnixNano. It exists because time.Parse's general layout machinery is
// about a fortieth of the wasm filter; rfc3339_test.go compares the two.
//
// Like time.Parse it takes a one- or two-digit hour, a fraction of a
// second after '.' or ',' (digits past the ninth ignored), and a zone
// offset up to 24:60.
func parseRFC3339Portable(s string) (int64, bool) {
	num2 := func(fixed bool) (int, bool) {
		if len(s) == 0 || !isDigitByte(s[0]) {
			return 0, false
		}
		if len(s) < 2 || !isDigitByte(s[1]) {
			if fixed {
				return 0, false
			}
			n := int(s[0] - '0')
			s = s[1:]
			return n, true
		}
		n := int(s[0]-'0')*10 + int(s[1]-'0')
		s = s[2:]
		return n, true
	}
	lit := func(c byte) bool {
		if len(s) == 0 || s[0] != c {
			return false
		}
		s = s[1:]
		return true
	}
	if len(s) < 4 || !isDigitByte(s[0]) || !isDigitByte(s[1]) || !isDigitByte(s[2]) || !isDigitByte(s[3]) {
		return 0, false
	}
	year := int(s[0]-'0')*1000 + int(s[1]-'0')*100 + int(s[2]-'0')*10 + int(s[3]-'0')
	s = s[4:]
	if !lit('-') {
		return 0, false
	}
	month, ok := num2(true)
	if !ok || month < 1 || month > 12 || !lit('-') {
		return 0, false
	}
	day, ok := num2(true)
	if !ok || !lit('T') {
		return 0, false
	}
	hour, ok := num2(false)
	if !ok || hour > 23 || !lit(':') {
		return 0, false
	}
	minute, ok := num2(true)
	if !ok || minute > 59 || !lit(':') {
		return 0, false
	}
	sec, ok := num2(true)
	if !ok || sec > 59 {
		return 0, false
	}
	var nsec int64
	if len(s) >= 2 && (s[0] == '.' || s[0] == ',') && isDigitByte(s[1]) {
		n := 2
		for n < len(s) && isDigitByte(s[n]) {
			n++
		}
		digits := s[1:min(n, 10)]
		for i := 0; i < 9; i++ {
			nsec *= 10
			if i < len(digits) {
				nsec += int64(digits[i] - '0')
			}
		}
		s = s[n:]
	}
	var offset int
	if !lit('Z') {
		if len(s) < 6 || s[3] != ':' {
			return 0, false
		}
		sign, hh, mm := s[0], s[1:3], s[4:6]
		s = s[6:]
		if !isDigitByte(hh[0]) || !isDigitByte(hh[1]) || !isDigitByte(mm[0]) || !isDigitByte(mm[1]) {
			return 0, false
		}
		oh, om := int(hh[0]-'0')*10+int(hh[1]-'0'), int(mm[0]-'0')*10+int(mm[1]-'0')
		if oh > 24 || om > 60 {
			return 0, false
		}
		offset = (oh*60 + om) * 60
		switch sign {
		case '+':
		case '-':
			offset = -offset
		default:
			return 0, false
		}
	}
	if len(s) != 0 || day < 1 || day > daysInMonth(month, year) {
		return 0, false
	}
	unix := daysFromCivil(year, month, day)*86400 + int64(hour*3600+minute*60+sec) - int64(offset)
	return unix*1e9 + nsec, true // wraps outside ±292 years of 1970, as Time.UnixNano does
}

func isDigitByte(c byte) bool { return '0' <= c && c <= '9' }

func daysInMonth(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// daysFromCivil is the number of days from 1970-01-01 to the given
// proleptic Gregorian date.
func daysFromCivil(y, m, d int) int64 {
	if m <= 2 {
		y--
	}
	era := y / 400
	if y < 0 && y%400 != 0 {
		era--
	}
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return int64(era)*146097 + int64(doe) - 719468
}
