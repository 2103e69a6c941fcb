package strictjson

// SortStrings sorts s in increasing order: slices.Sort's result, without
// its generic instantiation (twenty kilobytes of wasm). A heap sort: in
// place, O(n log n) whatever the input. StringMap orders its keys with it,
// and policies its other sorted string lists, so that the wasm filter
// links one string sort.
func SortStrings(s []string) {
	for i := len(s)/2 - 1; i >= 0; i-- {
		siftDown(s, i, len(s))
	}
	for end := len(s) - 1; end > 0; end-- {
		s[0], s[end] = s[end], s[0]
		siftDown(s, 0, end)
	}
}

// siftDown restores the max-heap property of s[:n] below root.
func siftDown(s []string, root, n int) {
	for {
		child := 2*root + 1
		if child >= n {
			return
		}
		if child+1 < n && s[child] < s[child+1] {
			child++
		}
		if s[root] >= s[child] {
			return
		}
		s[root], s[child] = s[child], s[root]
		root = child
	}
}
