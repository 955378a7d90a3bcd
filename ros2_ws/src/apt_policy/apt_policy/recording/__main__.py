"""``python -m apt_policy.recording`` = ``apt-record``."""

from apt_policy.recording.recorder import main

if __name__ == "__main__":
    main()
