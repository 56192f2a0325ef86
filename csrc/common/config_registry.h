// A name -> launcher table that kernel configurations fill as their translation units load
// (static registration objects), read by the op entry points. One table per Config type.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace fuseinfer {

template <typename Config>  // Config has a std::string `name`
class ConfigRegistry {
 public:
  static void add(Config config) {
    std::lock_guard<std::mutex> lock(mutex());
    std::string name = config.name;
    table()[name] = std::move(config);
  }

  static const Config* find(const std::string& name) {
    std::lock_guard<std::mutex> lock(mutex());
    auto it = table().find(name);
    return it == table().end() ? nullptr : &it->second;  // entries are never removed
  }

  static std::vector<std::string> names() {
    std::lock_guard<std::mutex> lock(mutex());
    std::vector<std::string> out;
    for (const auto& entry : table()) out.push_back(entry.first);
    return out;
  }

 private:
  static std::map<std::string, Config>& table() {
    static std::map<std::string, Config> configs;
    return configs;
  }
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
};

}  // namespace fuseinfer
