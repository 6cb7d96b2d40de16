package snapshot

import "time"

func (s *Snapshot) mtimeOf(p string) time.Time { return time.Unix(0, s.files[p].mtime) }
