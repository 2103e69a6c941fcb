package policies

import "fmt"

func sprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
