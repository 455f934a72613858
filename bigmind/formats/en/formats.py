"""The admin's one date style, "2026-12-02 20:00:36 UTC", in place of en-us's "Dec. 2, 2026,
8 p.m." (settings.FORMAT_MODULE_PATH). bigmind.display.datetime_display writes the same for
values the admin renders itself."""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s T"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
